//! The door to the kernels: one function per operation that the models
//! call, each choosing its implementation by device and build feature in
//! one place. Beside it, the kernels:
//!
//! | operation | CPU | CUDA, `--features cudnn` | CUDA |
//! |---|---|---|---|
//! | [`conv2d`], [`conv2d_bias`] | `conv_cpu` (im2col + GEMM, fused bias) | `cudnn` | candle's forward, `conv_gpu`'s backward |
//! | [`max_pool2d`] | `pool_cpu` | `cudnn` | a max over reshaped windows |
//! | [`relu`] | `pool_cpu` | candle's | candle's |
//! | [`batch_norm`] | `bn_cpu` in training mode, else candle_nn's | candle_nn's | candle_nn's |
//! | [`gelu_erf`], [`gelu_tanh`], [`silu`] | `eval_cpu` when no gradient is recorded, else candle's | candle's | candle's |
//! | [`norm`] (LayerNorm, RMSNorm) | `eval_cpu` when no gradient is recorded, else candle operations | candle operations | candle operations |
//! | [`causal_softmax`] | `eval_cpu` when no gradient is recorded, else candle's | candle's | candle's |
//!
//! The environment switches that pick a path to measure it against another
//! are read in one place too, [`switches`].

mod bn_cpu;
mod conv_cpu;
mod conv_gpu;
#[cfg(feature = "cudnn")]
mod cudnn;
mod eval_cpu;
mod pool_cpu;

pub use conv_cpu::{tune_malloc_for_training, unfold};

use candle_core::{bail, DType, Result, Tensor, D};
use candle_nn::{BatchNorm, ModuleT};

/// Environment variables that select an implementation, for measuring one
/// against the other (BENCHMARKS.md, "GPU").
pub(crate) mod switches {
    /// `LINTRACE_CUDNN=off`: CUDA convolutions and pooling without cuDNN
    /// (in a `--features cudnn` build).
    #[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
    pub fn cudnn() -> bool {
        std::env::var("LINTRACE_CUDNN").as_deref() != Ok("off")
    }
    /// `LINTRACE_CONV_BWD=candle`: candle's own convolution backward off
    /// the CPU instead of `conv_gpu`'s.
    pub fn candle_conv_backward() -> bool {
        matches!(std::env::var("LINTRACE_CONV_BWD").as_deref(), Ok("candle"))
    }
    /// `LINTRACE_CONV_GRADW=conv`: `conv_gpu`'s weight gradient by candle's
    /// conv formula at stride 1 too, instead of one GEMM.
    pub fn conv_grad_weight_by_conv() -> bool {
        matches!(std::env::var("LINTRACE_CONV_GRADW").as_deref(), Ok("conv"))
    }
}

/// Whether cuDNN takes an operation on `x`.
#[cfg(feature = "cudnn")]
fn by_cudnn(x: &Tensor) -> bool {
    cudnn::applies(x)
}

/// Cross-correlation of `x` [B, C, H, W] with `w` [O, C, kh, kw] (PyTorch
/// `Conv2d` layout, no dilation, groups 1), zero `padding` on every side and
/// `stride` in both directions, differentiable wrt both; [B, O, H', W'] with
/// H' = (H + 2·padding − kh) / stride + 1 (likewise W').
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    if x.device().is_cpu() {
        return conv_cpu::conv2d(x, w, padding, stride);
    }
    #[cfg(feature = "cudnn")]
    if by_cudnn(x) {
        return cudnn::conv2d(x, w, None, padding, stride);
    }
    conv_gpu::conv2d(x, w, padding, stride)
}

/// `conv2d(x, w, padding, stride) + b` with `b` of shape [O] (or
/// [1, O, 1, 1]): fused on the CPU and under cuDNN.
pub fn conv2d_bias(x: &Tensor, w: &Tensor, b: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let o = w.dim(0)?;
    if b.elem_count() != o {
        bail!("conv2d_bias: bias {:?} does not have {o} elements", b.dims());
    }
    if x.device().is_cpu() {
        return conv_cpu::conv2d_bias(x, w, b, padding, stride);
    }
    #[cfg(feature = "cudnn")]
    if by_cudnn(x) {
        return cudnn::conv2d(x, w, Some(b), padding, stride);
    }
    conv_gpu::conv2d(x, w, padding, stride)?.broadcast_add(&b.reshape((1, o, 1, 1))?)
}

/// Max pooling with a k×k window and stride k (no padding, floor mode), as
/// `torch.nn.MaxPool2d(k)`, on x [B, C, H, W]; the gradient goes to the
/// first maximum of each window, as PyTorch's.
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    if x.rank() != 4 {
        bail!("max_pool2d: expected x [B, C, H, W], got {:?}", x.dims());
    }
    let (b, c, h, w) = x.dims4()?;
    if k == 0 || k > h || k > w {
        bail!("max_pool2d: window {k} does not fit {h}x{w}");
    }
    if x.device().is_cpu() {
        return pool_cpu::max_pool2d(x, k);
    }
    #[cfg(feature = "cudnn")]
    if by_cudnn(x) {
        return cudnn::max_pool2d(x, k);
    }
    // Not candle's max_pool2d, whose backward scales gradients by 1/k²
    // (pool_cpu.rs): a max over reshaped windows, whose backward (candle's
    // reduce-max) sends the gradient to the maximum (to each one of exact ties).
    let (ho, wo) = (h / k, w / k);
    let x = x.narrow(2, 0, ho * k)?.narrow(3, 0, wo * k)?;
    x.reshape((b, c, ho, k, wo, k))?.max(5)?.max(3)
}

/// max(x, 0), differentiable (gradient 1 where the output is > 0).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() {
        return pool_cpu::relu(x);
    }
    x.relu()
}

/// `bn.forward_t(x, train)`: fused on the CPU in training mode (f32/f64,
/// [B, C, H, W] or [B, C], affine), candle_nn's everywhere else.
pub fn batch_norm(bn: &BatchNorm, x: &Tensor, train: bool) -> Result<Tensor> {
    if train && x.device().is_cpu() {
        if let Some(y) = bn_cpu::forward_train(bn, x)? {
            return Ok(y);
        }
    }
    bn.forward_t(x, train)
}

/// Whether an evaluation kernel takes `x`: on the CPU, in f32 or f64, and
/// recording no gradient (the kernels have no backward).
fn by_eval_cpu(x: &Tensor) -> bool {
    x.device().is_cpu() && !x.track_op() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// GELU, exact (erf) form: `torch.nn.GELU()`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if by_eval_cpu(x) {
        return eval_cpu::unary(x, eval_cpu::Unary::GeluErf);
    }
    x.gelu_erf()
}

/// GELU's tanh approximation (GPT-2's `gelu_new`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if by_eval_cpu(x) {
        return eval_cpu::unary(x, eval_cpu::Unary::GeluTanh);
    }
    x.gelu()
}

/// x·sigmoid(x).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if by_eval_cpu(x) {
        return eval_cpu::unary(x, eval_cpu::Unary::Silu);
    }
    x.silu()
}

/// LayerNorm ((x − mean) / sqrt(var + eps), biased variance, as PyTorch)
/// or, with `rms`, RMSNorm (x / sqrt(mean(x²) + eps)) over the last
/// dimension, then × `weight` + `bias` where given.
pub fn norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64, rms: bool) -> Result<Tensor> {
    let params =
        |t: Option<&Tensor>| -> Result<Option<Vec<f64>>> { t.map(|t| t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()).transpose() };
    if by_eval_cpu(x) && !weight.is_some_and(Tensor::track_op) && !bias.is_some_and(Tensor::track_op) {
        return eval_cpu::norm(x, eval_cpu::Norm { rms, eps, weight: params(weight)?, bias: params(bias)? });
    }
    norm_differentiable(x, weight, bias, eps, rms)
}

/// [`norm`] as candle operations, differentiable: what training runs (the
/// ViT's and GPT's LayerNorms always, since candle 0.11's fused LayerNorm has
/// no backward), and every device but the CPU.
pub fn norm_differentiable(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64, rms: bool) -> Result<Tensor> {
    let x = if rms {
        x.broadcast_div(&(x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?)?
    } else {
        let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + eps)?.sqrt()?)?
    };
    let x = match weight {
        Some(w) => x.broadcast_mul(w)?,
        None => x,
    };
    match bias {
        Some(b) => x.broadcast_add(b),
        None => Ok(x),
    }
}

/// softmax over the last dimension of `scale · scores + mask`, where
/// `mask` [t, t] is 0 on and below the diagonal and −∞ above it: causal
/// attention weights from scores [.., t, t]. Fused on the CPU.
pub fn causal_softmax(scores: &Tensor, scale: f64, mask: &Tensor) -> Result<Tensor> {
    if by_eval_cpu(scores) {
        return eval_cpu::causal_softmax(scores, scale);
    }
    candle_nn::ops::softmax_last_dim(&(scores * scale)?.broadcast_add(mask)?)
}
