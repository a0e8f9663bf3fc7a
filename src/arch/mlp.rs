//! The MLP: flatten → [dense → σ (tap)] × depth → dense head.
//! PyTorch: `layers = nn.Sequential(Linear, Act, Linear, Act, …, Linear)`,
//! so layer `i` is `layers.{2i}` and its activation `layers.{2i + 1}`.

use crate::nn::{block, current, dense, Activation, Dense, Frame, Layout, SizeGuard, Start, Taps, Weights};
use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// `{"kind": "mlp", "hidden": [widths]}`: flatten, then a dense layer and
/// a tap per hidden width, then a dense head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpSpec {
    pub hidden: Vec<usize>,
}

impl MlpSpec {
    /// `lintrace-train --model mlp`: `depth` hidden layers of `width`.
    pub fn preset(width: usize, depth: usize) -> MlpSpec {
        MlpSpec { hidden: vec![width; depth] }
    }
}

impl super::ArchSpec for MlpSpec {
    fn num_taps(&self) -> usize {
        self.hidden.len()
    }

    fn validate(&self, _frame: &Frame) -> Result<(), String> {
        if self.hidden.contains(&0) {
            return Err("mlp hidden widths must be positive".into());
        }
        Ok(())
    }

    fn check_sizes(&self, frame: &Frame, guard: &mut SizeGuard) -> Result<(), String> {
        guard.dense(SizeGuard::elements(&frame.input_shape, "input_shape")?, &self.hidden, frame.num_classes)
    }

    fn layout(&self, frame: &Frame) -> Layout {
        let mut l = Layout::empty();
        let mut prev = frame.input_len();
        for (i, &w) in self.hidden.iter().enumerate() {
            let layer = dense(format!("layers.{}", 2 * i), w, prev);
            l.push_tap(frame, layer.clone(), layer.name, format!("layers.{}", 2 * i + 1), vec![w]);
            prev = w;
        }
        l.layers.push(dense(format!("layers.{}", 2 * self.hidden.len()), frame.num_classes, prev));
        l
    }
}

pub struct Mlp {
    hidden: Vec<(Dense, Activation)>,
    head: Dense,
    leaky_slope: f64,
}

impl Mlp {
    pub fn new(frame: &Frame, layout: &Layout, w: &mut Weights) -> Result<Self> {
        let (head, hidden) = layout.layers.split_last().expect("a model has a head");
        Ok(Mlp {
            hidden: hidden
                .iter()
                .map(|d| Ok((Dense::new(d, w)?, frame.activation(d.tap.expect("hidden layers feed taps")))))
                .collect::<Result<_>>()?,
            head: Dense::new(head, w)?,
            leaky_slope: frame.leaky_relu_slope,
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
