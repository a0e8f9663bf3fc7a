//! The building blocks: dense and convolution layers, and the activations.

use super::desc::{Activation, LayerDesc};
use super::weights::Weights;
use anyhow::Result;
use candle_core::Tensor;
use candle_nn::BatchNorm;

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
        Ok(super::ops::conv2d_bias(x, &self.weight, &self.bias, self.padding, 1)?)
    }
}

/// The BatchNorm `name` over `channels`, from its four tensors (PyTorch's
/// eps 1e-5). The trainer's variables go in as they are (a Var's tensor
/// stays that Var inside candle's BatchNorm), so the running statistics it
/// updates in training are the ones checkpointed.
pub fn batch_norm(w: &mut Weights, name: &str, channels: usize) -> Result<BatchNorm> {
    let mut t = |x: &str| w.take(&format!("{name}.{x}"), &[channels]);
    let (weight, bias, mean, var) = (t("weight")?, t("bias")?, t("running_mean")?, t("running_var")?);
    Ok(BatchNorm::new(channels, mean, var, weight, bias, 1e-5)?)
}

/// σ(z) for one tap. GELU is the exact (erf) form, as `torch.nn.GELU()`.
pub fn activate(act: Activation, leaky_slope: f64, z: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Relu => super::ops::relu(z)?,
        Activation::LeakyRelu => (z.relu()? - (z.neg()?.relu()? * leaky_slope)?)?,
        Activation::Gelu => super::ops::gelu_erf(z)?,
        Activation::GeluTanh => super::ops::gelu_tanh(z)?,
        Activation::Silu => super::ops::silu(z)?,
        Activation::Tanh => z.tanh()?,
        Activation::Identity => z.clone(),
    })
}

/// Inverted dropout: a Bernoulli(1 − p) mask drawn on the CPU from (key,
/// slot), scaled by 1/(1 − p). The trainer sets the key from (seed, step), so
/// a resumed run draws the same masks; `slot` tells a model's dropout sites
/// apart.
pub fn dropout(a: &Tensor, p: f64, key: u64, slot: usize) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(key ^ ((slot as u64 + 1) << 56));
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..a.elem_count()).map(|_| if rng.gen::<f64>() < p { 0.0 } else { keep }).collect();
    Ok((a * Tensor::from_vec(mask, a.dims(), a.device())?)?)
}
