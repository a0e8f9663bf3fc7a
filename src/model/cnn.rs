//! The CNN: a VGG-style `features` stack of [conv → σ (tap)] and 2×2
//! max-pools, flatten (C, H, W order), then a `classifier` of
//! [dense → σ (tap)] and a dense head.
//! PyTorch: `features = nn.Sequential(Conv2d, Act, MaxPool2d, …)`,
//! `classifier = nn.Sequential(Linear, Act, …, Linear)`.

use super::{batch_norm, block, current, Conv2d, Dense, Start, Taps, Weights};
use crate::spec::{Activation, Arch, ConvItem, ModelSpec};
use anyhow::Result;
use candle_core::Tensor;
use candle_nn::BatchNorm;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// PyTorch's `AdaptiveAvgPool2d((side, side))`: output cell i averages
/// input rows ⌊i·H/side⌋ .. ⌈(i+1)·H/side⌉ (likewise columns). A linear
/// map, applied as one matrix product [B·C, H·W] × [H·W, side²].
fn adaptive_avg_pool(x: &Tensor, side: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let bins = |n: usize, i: usize| (i * n / side, ((i + 1) * n).div_ceil(side));
    let mut m = vec![0f32; h * w * side * side];
    for oi in 0..side {
        let (r0, r1) = bins(h, oi);
        for oj in 0..side {
            let (c0, c1) = bins(w, oj);
            let weight = 1.0 / ((r1 - r0) * (c1 - c0)) as f32;
            for r in r0..r1 {
                for col in c0..c1 {
                    m[(r * w + col) * side * side + oi * side + oj] = weight;
                }
            }
        }
    }
    let m = Tensor::from_vec(m, (h * w, side * side), x.device())?.to_dtype(x.dtype())?;
    Ok(x.reshape((b * c, h * w))?.matmul(&m)?.reshape((b, c, side, side))?)
}

enum Feature {
    Conv(Conv2d, Option<BatchNorm>, Activation),
    MaxPool,
}

pub struct Cnn {
    features: Vec<Feature>,
    /// torchvision VGG's `avgpool`: adaptive average pool to side × side.
    adaptive_pool: Option<usize>,
    /// torchvision VGG's classifier dropout (training only).
    dropout: Option<f64>,
    /// Seeds this step's dropout masks (set by the trainer each step), so a
    /// resumed run draws the same masks.
    dropout_key: AtomicU64,
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
        let Arch::Cnn { conv, adaptive_pool, dropout, .. } = &spec.arch else { unreachable!("Cnn::new on a non-cnn spec") };
        let layers = spec.layers();
        let mut descs = layers.iter();
        let mut features = Vec::new();
        for item in conv {
            features.push(match item {
                ConvItem::Conv(_) => {
                    let d = descs.next().expect("one layer per conv entry");
                    let conv = Conv2d::new(d, w)?;
                    let bn = d.norm.as_deref().map(|bn| batch_norm(w, bn, d.weight_shape[0])).transpose()?;
                    Feature::Conv(conv, bn, spec.tap_activation(d.tap.expect("convs feed taps")))
                }
                ConvItem::Pool(_) => Feature::MaxPool,
            });
        }
        let rest: Vec<_> = descs.collect();
        let (head, dense) = rest.split_last().expect("a model has a head");
        Ok(Cnn {
            features,
            adaptive_pool: *adaptive_pool,
            dropout: dropout.filter(|&p| p > 0.0),
            dropout_key: AtomicU64::new(0),
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

    pub fn set_dropout_key(&self, key: u64) {
        self.dropout_key.store(key, Ordering::Relaxed);
    }

    /// Inverted dropout of classifier layer `i`'s activation: a Bernoulli
    /// mask drawn on the CPU from (key, layer), scaled by 1/(1 − p).
    fn drop(&self, i: usize, a: Tensor) -> Result<Tensor> {
        match self.dropout.filter(|_| self.training.load(Ordering::Relaxed)) {
            Some(p) => super::dropout(&a, p, self.dropout_key.load(Ordering::Relaxed), i),
            None => Ok(a),
        }
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
                            Some(bn) => super::ops::batch_norm(bn, &z, train)?,
                            None => z,
                        })
                    })?;
                    tap += 1;
                }
                // Pools before the start tap belong to what is skipped.
                Feature::MaxPool => h = h.map(|x| super::ops::max_pool2d(&x, 2)).transpose()?,
            }
        }
        if let Some(side) = self.adaptive_pool {
            h = h.map(|x| adaptive_avg_pool(&x, side)).transpose()?;
        }
        h = h.map(|x| x.flatten_from(1)).transpose()?;
        for (i, (dense, act)) in self.classifier.iter().enumerate() {
            h = block(start, tap, h, taps, *act, self.leaky_slope, |x| dense.forward(x))?;
            h = h.map(|a| self.drop(i, a)).transpose()?;
            tap += 1;
        }
        self.head.forward(current(&h))
    }
}
