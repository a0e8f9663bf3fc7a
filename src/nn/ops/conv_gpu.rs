//! 2-D convolution off the CPU with a backward made of cuDNN/cuBLAS work.
//!
//! candle's own `conv2d` backward computes the input gradient with its
//! `conv_transpose2d` kernel, a direct loop that neither cuDNN nor cuBLAS
//! runs, and computes it even when the input is the data batch (no one
//! wants that gradient). Here the forward is candle's `conv2d` (cuDNN under
//! `--features cudnn`), and the backward is
//!
//! ```text
//! dx = conv2d(dilate_s(dy), flip(Wᵀ), padding k−1−p)      (skipped when x needs no gradient)
//! dW = dyᵀ[O, B·L] · cols(x)[B·L, C·kh·kw]                 (one GEMM; stride 1)
//! dW = candle's conv2d formula                           (stride > 1)
//! ```
//!
//! The forward runs outside the autograd graph; a [`CustomOp2`] on (x, w)
//! hands its result on (one device copy) and owns the backward. The CPU has
//! its own fused im2col op ([`super::conv_cpu`]); this op also runs on the
//! CPU, where the tests compare its gradients with candle's.
//!
//! `LINTRACE_CONV_BWD=candle` switches back to candle's backward and
//! `LINTRACE_CONV_GRADW=conv` makes dW use candle's conv formula at stride 1
//! too: both exist to measure this file against what it replaces.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};

/// Cross-correlation of `x` [B, C, H, W] with `w` [O, C, kh, kw], zero
/// `padding`, `stride` in both directions (PyTorch `Conv2d`, groups 1, no
/// dilation); differentiable wrt both.
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    if super::switches::candle_conv_backward() || !(x.track_op() || w.track_op()) {
        return x.conv2d(w, padding, stride, 1, 1);
    }
    let (_, c, _, _) = x.dims4()?;
    let (_, wc, kh, kw) = w.dims4()?;
    if c != wc {
        bail!("conv2d: input has {c} channels but the kernel expects {wc}");
    }
    if padding >= kh || padding >= kw {
        // dx would need a negative padding; candle's backward handles it.
        return x.conv2d(w, padding, stride, 1, 1);
    }
    let y = x.detach().conv2d(&w.detach(), padding, stride, 1, 1)?;
    x.apply_op2(w, ConvBwd { y, padding, stride })
}

/// Hands the precomputed output on as the op's result.
fn pass_on_cpu(y: &Tensor) -> Result<(CpuStorage, Shape)> {
    let (st, l) = y.storage_and_layout();
    match &*st {
        Storage::Cpu(s) if l.is_contiguous() && l.start_offset() == 0 => Ok((s.try_clone(l)?, l.shape().clone())),
        _ => bail!("conv2d: internal error, forward result is not a contiguous CPU tensor"),
    }
}

#[cfg(feature = "cuda")]
fn pass_on_cuda(y: &Tensor) -> Result<(candle_core::CudaStorage, Shape)> {
    let (st, l) = y.storage_and_layout();
    match &*st {
        Storage::Cuda(s) if l.is_contiguous() && l.start_offset() == 0 => Ok((s.try_clone(l)?, l.shape().clone())),
        _ => bail!("conv2d: internal error, forward result is not a contiguous CUDA tensor"),
    }
}

struct ConvBwd {
    y: Tensor,
    padding: usize,
    stride: usize,
}

impl CustomOp2 for ConvBwd {
    fn name(&self) -> &'static str {
        "lintrace-conv2d"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        pass_on_cpu(&self.y)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        pass_on_cuda(&self.y)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() { Some(grad_input(dy, w, x.dims4()?, self.padding, self.stride)?) } else { None };
        let dw = if self.stride == 1 && !super::switches::conv_grad_weight_by_conv() {
            grad_weight_gemm(x, dy, w.dims4()?, self.padding)?
        } else {
            grad_weight_conv(x, dy, w.dims4()?, self.padding, self.stride)?
        };
        Ok((dx, Some(dw)))
    }
}

/// dx of a strided cross-correlation: the output gradient, dilated by the
/// stride (zeros between its elements), correlated with the kernel
/// transposed in (O, C) and flipped in space, padded by k−1−p; `r` extra
/// rows/columns at the far edge restore the input rows the stride skipped.
fn grad_input(dy: &Tensor, w: &Tensor, x_dims: (usize, usize, usize, usize), p: usize, s: usize) -> Result<Tensor> {
    let (b, _c, h, wd) = x_dims;
    let (_, o, ho, wo) = dy.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    if kh != kw {
        bail!("conv2d backward: only square kernels are supported (got {kh}×{kw})");
    }
    let mut g = dy.contiguous()?;
    if s > 1 {
        // [B,O,Ho,1,Wo,1] padded to [B,O,Ho,s,Wo,s] puts each value at a
        // multiple of s; then cut the trailing zeros after the last value.
        g = g
            .reshape((b, o, ho, 1, wo, 1))?
            .pad_with_zeros(3, 0, s - 1)?
            .pad_with_zeros(5, 0, s - 1)?
            .reshape((b, o, ho * s, wo * s))?
            .narrow(2, 0, (ho - 1) * s + 1)?
            .narrow(3, 0, (wo - 1) * s + 1)?;
    }
    let pad = kh - 1 - p;
    let out_h = (ho - 1) * s + 1 + 2 * pad + 1 - kh;
    let out_w = (wo - 1) * s + 1 + 2 * pad + 1 - kw;
    if out_h > h || out_w > wd {
        bail!("conv2d backward: internal size error ({out_h}×{out_w} > {h}×{wd})");
    }
    if out_h < h || out_w < wd {
        g = g.pad_with_zeros(2, 0, h - out_h)?.pad_with_zeros(3, 0, wd - out_w)?;
    }
    let w_t = w.detach().transpose(0, 1)?.contiguous()?.flip(&[2, 3])?.contiguous()?;
    g.conv2d(&w_t, pad, 1, 1, 1)
}

/// dW at stride 1 as one GEMM: dyᵀ [O, B·Ho·Wo] times the column matrix
/// of the zero-padded input [B·Ho·Wo, C·kh·kw] (built by kh·kw slices).
fn grad_weight_gemm(x: &Tensor, dy: &Tensor, w_dims: (usize, usize, usize, usize), p: usize) -> Result<Tensor> {
    let (o, c, kh, kw) = w_dims;
    let (b, _, ho, wo) = dy.dims4()?;
    let xp = x.detach().pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    let mut slices = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        for j in 0..kw {
            slices.push(xp.narrow(2, i, ho)?.narrow(3, j, wo)?);
        }
    }
    // [B, C, kh·kw, Ho, Wo] -> [B, Ho, Wo, C, kh·kw] -> [B·Ho·Wo, C·kh·kw]
    let cols = Tensor::stack(&slices, 2)?.permute((0, 3, 4, 1, 2))?.contiguous()?.reshape((b * ho * wo, c * kh * kw))?;
    let g = dy.transpose(0, 1)?.contiguous()?.reshape((o, b * ho * wo))?;
    g.matmul(&cols)?.reshape((o, c, kh, kw))
}

/// candle's own dW (a convolution of xᵀ with dyᵀ, dilated by the stride).
fn grad_weight_conv(x: &Tensor, dy: &Tensor, w_dims: (usize, usize, usize, usize), p: usize, s: usize) -> Result<Tensor> {
    let (_, _, kh, kw) = w_dims;
    let g = x.detach().transpose(0, 1)?.conv2d(&dy.transpose(0, 1)?, p, 1, s, 1)?.transpose(0, 1)?;
    let (_, _, gh, gw) = g.dims4()?;
    if gh != kh || gw != kw {
        g.narrow(2, 0, kh)?.narrow(3, 0, kw)
    } else {
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// Gradients of sum(conv(x, w) · r) through this op against candle's own
    /// conv backward, for strides, paddings and odd sizes that exercise the
    /// dilation and the far-edge rows of dx.
    #[test]
    fn gradients_match_candles() -> Result<()> {
        let dev = Device::Cpu;
        for &(h, k, p, s) in &[(7usize, 3usize, 1usize, 1usize), (8, 3, 0, 1), (9, 3, 1, 2), (8, 3, 1, 2), (10, 1, 0, 2), (11, 5, 2, 3)] {
            // candle's own backward takes one out_padding for both dims, so
            // non-square inputs are compared at stride 1 only.
            let wd = if s == 1 { h + 1 } else { h };
            let x = Var::from_tensor(&Tensor::randn(0f64, 1., (2, 3, h, wd), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f64, 1., (4, 3, k, k), &dev)?)?;
            let ours = conv2d(x.as_tensor(), w.as_tensor(), p, s)?;
            let theirs = x.as_tensor().conv2d(w.as_tensor(), p, s, 1, 1)?;
            assert_eq!(ours.dims(), theirs.dims());
            let r = Tensor::randn(0f64, 1., ours.dims(), &dev)?;
            let diff = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(diff < 1e-12, "forward differs by {diff}");
            let g1 = (&ours * &r)?.sum_all()?.backward()?;
            let g2 = (&theirs * &r)?.sum_all()?.backward()?;
            for v in [&x, &w] {
                let a = g1.get(v.as_tensor()).expect("gradient");
                let b = g2.get(v.as_tensor()).expect("gradient");
                assert_eq!(a.dims(), b.dims());
                let d = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
                let m = b.abs()?.max_all()?.to_scalar::<f64>()?;
                assert!(d <= 1e-10 * m.max(1.), "h {h} k {k} p {p} s {s}: gradient differs by {d}");
            }
        }
        Ok(())
    }

    /// Non-square inputs at stride 2 against the CPU im2col op.
    #[test]
    fn strided_non_square_matches_the_cpu_op() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f64, 1., (2, 3, 9, 12), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f64, 1., (4, 3, 3, 3), &dev)?)?;
        let ours = conv2d(x.as_tensor(), w.as_tensor(), 1, 2)?;
        let cpu = super::super::conv_cpu::conv2d(x.as_tensor(), w.as_tensor(), 1, 2)?;
        let r = Tensor::randn(0f64, 1., ours.dims(), &dev)?;
        let g1 = (&ours * &r)?.sum_all()?.backward()?;
        let g2 = (&cpu * &r)?.sum_all()?.backward()?;
        for v in [&x, &w] {
            let (a, b) = (g1.get(v.as_tensor()).expect("gradient"), g2.get(v.as_tensor()).expect("gradient"));
            let d = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(d < 1e-10, "gradient differs by {d}");
        }
        Ok(())
    }

    /// The data batch gets no gradient (it is skipped, not computed).
    #[test]
    fn no_gradient_for_an_untracked_input() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 6, 6), &dev)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1., (4, 3, 3, 3), &dev)?)?;
        let y = conv2d(&x, w.as_tensor(), 1, 1)?;
        assert_eq!(y.dtype(), DType::F32);
        let g = y.sum_all()?.backward()?;
        assert!(g.get(&x).is_none());
        assert!(g.get(w.as_tensor()).is_some());
        Ok(())
    }
}
