//! The MLP: flatten → [dense → σ (tap)] × depth → dense head.
//! PyTorch: `layers = nn.Sequential(Linear, Act, Linear, Act, …, Linear)`.

use super::{block, current, Dense, Start, Taps, Weights};
use crate::spec::{Activation, ModelSpec};
use anyhow::Result;
use candle_core::Tensor;

pub struct Mlp {
    hidden: Vec<(Dense, Activation)>,
    head: Dense,
    leaky_slope: f64,
}

impl Mlp {
    pub fn new(spec: &ModelSpec, w: &mut Weights) -> Result<Self> {
        let layers = spec.layers();
        let (head, hidden) = layers.split_last().expect("a model has a head");
        Ok(Mlp {
            hidden: hidden
                .iter()
                .map(|d| Ok((Dense::new(d, w)?, spec.tap_activation(d.tap.expect("hidden layers feed taps")))))
                .collect::<Result<_>>()?,
            head: Dense::new(head, w)?,
            leaky_slope: spec.leaky_relu_slope,
        })
    }

    pub fn forward(&self, start: Start<'_>, taps: &mut Taps) -> Result<Tensor> {
        let mut h = start.input().map(|x| x.flatten_from(1)).transpose()?;
        for (l, (dense, act)) in self.hidden.iter().enumerate() {
            h = block(start, l, h, taps, *act, self.leaky_slope, |x| dense.forward(x))?;
        }
        self.head.forward(current(&h))
    }
}
