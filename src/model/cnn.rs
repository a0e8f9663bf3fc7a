//! The CNN: a VGG-style `features` stack of [conv → σ (tap)] and 2×2
//! max-pools, flatten (C, H, W order), then a `classifier` of
//! [dense → σ (tap)] and a dense head.
//! PyTorch: `features = nn.Sequential(Conv2d, Act, MaxPool2d, …)`,
//! `classifier = nn.Sequential(Linear, Act, …, Linear)`.

use super::{Conv2d, Dense, Taps, Weights};
use crate::spec::{Activation, Arch, ConvItem, ModelSpec};
use anyhow::Result;
use candle_core::Tensor;

enum Feature {
    Conv(Conv2d, Activation),
    MaxPool,
}

pub struct Cnn {
    features: Vec<Feature>,
    classifier: Vec<(Dense, Activation)>,
    head: Dense,
    leaky_slope: f64,
}

impl Cnn {
    pub fn new(spec: &ModelSpec, w: &mut Weights) -> Result<Self> {
        let Arch::Cnn { conv, .. } = &spec.arch else { unreachable!("Cnn::new on a non-cnn spec") };
        let layers = spec.layers();
        let mut descs = layers.iter();
        let mut features = Vec::new();
        for item in conv {
            features.push(match item {
                ConvItem::Conv(_) => {
                    let d = descs.next().expect("one layer per conv entry");
                    Feature::Conv(Conv2d::new(d, w)?, spec.tap_activation(d.tap.expect("convs feed taps")))
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
        })
    }

    pub fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        let mut h = x.clone();
        let mut tap = 0;
        for f in &self.features {
            h = match f {
                Feature::Conv(conv, act) => {
                    let z = conv.forward(&h)?;
                    tap += 1;
                    taps.apply(tap - 1, *act, self.leaky_slope, &h, &z)?
                }
                Feature::MaxPool => h.max_pool2d(2)?,
            };
        }
        let mut h = h.flatten_from(1)?;
        for (dense, act) in &self.classifier {
            let z = dense.forward(&h)?;
            tap += 1;
            h = taps.apply(tap - 1, *act, self.leaky_slope, &h, &z)?;
        }
        self.head.forward(&h)
    }
}
