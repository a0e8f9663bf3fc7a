//! The CNN: a VGG-style `features` stack of [conv → σ (tap)] and 2×2
//! max-pools, flatten (C, H, W order), then a `classifier` of
//! [dense → σ (tap)] and a dense head.
//! PyTorch: `features = nn.Sequential(Conv2d, Act, MaxPool2d, …)`,
//! `classifier = nn.Sequential(Linear, Act, …, Linear)`.

use super::{block, current, Conv2d, Dense, Start, Taps, Weights};
use crate::spec::{Activation, Arch, ConvItem, ModelSpec};
use anyhow::Result;
use candle_core::Tensor;
use candle_nn::{BatchNorm, ModuleT};
use std::sync::atomic::{AtomicBool, Ordering};

enum Feature {
    Conv(Conv2d, Option<BatchNorm>, Activation),
    MaxPool,
}

pub struct Cnn {
    features: Vec<Feature>,
    classifier: Vec<(Dense, Activation)>,
    head: Dense,
    leaky_slope: f64,
    /// BatchNorm with batch statistics (and running statistics updated) when
    /// training; with running statistics otherwise (the analyzer's mode,
    /// `model.eval()` in PyTorch).
    training: AtomicBool,
}

impl Cnn {
    pub fn new(spec: &ModelSpec, w: &mut Weights) -> Result<Self> {
        let Arch::Cnn { conv, .. } = &spec.arch else { unreachable!("Cnn::new on a non-cnn spec") };
        let layers = spec.layers();
        let mut descs = layers.iter();
        let mut norms = spec.batch_norms().into_iter();
        let mut features = Vec::new();
        for item in conv {
            features.push(match item {
                ConvItem::Conv(_) => {
                    let d = descs.next().expect("one layer per conv entry");
                    let conv = Conv2d::new(d, w)?;
                    // The trainer's variables go in as they are (a Var's
                    // tensor stays that Var inside candle's BatchNorm), so the
                    // running statistics it updates are the ones checkpointed.
                    let bn = match norms.next().filter(|(bn, _)| bn.starts_with("features.")) {
                        Some((bn, c)) => {
                            let mut t = |x: &str| w.take(&format!("{bn}.{x}"), &[c]);
                            let (weight, bias, mean, var) = (t("weight")?, t("bias")?, t("running_mean")?, t("running_var")?);
                            Some(BatchNorm::new(c, mean, var, weight, bias, 1e-5)?)
                        }
                        None => None,
                    };
                    Feature::Conv(conv, bn, spec.tap_activation(d.tap.expect("convs feed taps")))
                }
                ConvItem::Pool(_) => Feature::MaxPool,
            });
        }
        let rest: Vec<_> = descs.collect();
        let (head, dense) = rest.split_last().expect("a model has a head");
        Ok(Cnn {
            features,
            classifier: dense
                .iter()
                .map(|d| Ok((Dense::new(d, w)?, spec.tap_activation(d.tap.expect("dense layers feed taps")))))
                .collect::<Result<_>>()?,
            head: Dense::new(head, w)?,
            leaky_slope: spec.leaky_relu_slope,
            training: AtomicBool::new(false),
        })
    }

    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed);
    }

    pub fn forward(&self, start: Start<'_>, taps: &mut Taps) -> Result<Tensor> {
        let mut h = start.input().cloned();
        let mut tap = 0;
        for f in &self.features {
            match f {
                Feature::Conv(conv, bn, act) => {
                    let train = self.training.load(Ordering::Relaxed);
                    h = block(start, tap, h, taps, *act, self.leaky_slope, |x| {
                        let z = conv.forward(x)?;
                        Ok(match bn {
                            Some(bn) => bn.forward_t(&z, train)?,
                            None => z,
                        })
                    })?;
                    tap += 1;
                }
                // Pools before the start tap belong to what is skipped.
                Feature::MaxPool => h = h.map(|x| super::pool_cpu::max_pool2d(&x, 2)).transpose()?,
            }
        }
        h = h.map(|x| x.flatten_from(1)).transpose()?;
        for (dense, act) in &self.classifier {
            h = block(start, tap, h, taps, *act, self.leaky_slope, |x| dense.forward(x))?;
            tap += 1;
        }
        self.head.forward(current(&h))
    }
}
