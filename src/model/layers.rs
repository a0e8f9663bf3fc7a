//! The building blocks: dense and convolution layers, and the activations.

use super::Weights;
use crate::spec::{Activation, LayerDesc};
use anyhow::Result;
use candle_core::Tensor;

/// y = x Wᵀ + b, with W [out, in] as in `torch.nn.Linear`.
pub struct Dense {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Dense {
    pub fn new(desc: &LayerDesc, w: &mut Weights) -> Result<Self> {
        Ok(Dense {
            weight: w.take(&format!("{}.weight", desc.name), &desc.weight_shape)?,
            bias: w.take(&format!("{}.bias", desc.name), &desc.weight_shape[..1])?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?)
    }
}

/// Stride-1 convolution with "same" zero padding, W [out, in, kh, kw] as in
/// `torch.nn.Conv2d` (cross-correlation).
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub padding: usize,
}

impl Conv2d {
    pub fn new(desc: &LayerDesc, w: &mut Weights) -> Result<Self> {
        let out = desc.weight_shape[0];
        Ok(Conv2d {
            weight: w.take(&format!("{}.weight", desc.name), &desc.weight_shape)?,
            bias: w.take(&format!("{}.bias", desc.name), &[out])?.reshape((1, out, 1, 1))?,
            padding: desc.weight_shape[2] / 2,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(super::conv_cpu::conv2d_bias(x, &self.weight, &self.bias, self.padding, 1)?)
    }
}

/// σ(z) for one tap. GELU is the exact (erf) form, as `torch.nn.GELU()`.
pub fn activate(act: Activation, leaky_slope: f64, z: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Relu => super::pool_cpu::relu(z)?,
        Activation::LeakyRelu => (z.relu()? - (z.neg()?.relu()? * leaky_slope)?)?,
        Activation::Gelu => z.gelu_erf()?,
        Activation::Tanh => z.tanh()?,
        Activation::Identity => z.clone(),
    })
}
