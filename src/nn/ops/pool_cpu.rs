//! Fast differentiable CPU versions of the cheap CNN ops whose candle
//! backward passes cost a large share of a training step: 2×2-style max
//! pooling and ReLU.
//!
//! candle's `max_pool2d` backward builds an upsampled copy, an equality mask,
//! a dtype cast, an avg-pool, a product and another upsample (≈7 passes over
//! the activation, single-threaded); its `relu` backward is a compare, a cast
//! and a product. Here each backward is one parallel pass. On other devices
//! both functions fall back to candle's ops.
//!
//! Note: candle 0.11's own max_pool2d backward is wrong twice over: it
//! scales every gradient by 1/k² (0.25 for 2×2 pooling, so each pool shrinks
//! the gradient of all layers below it 4×), and for H or W not divisible by k
//! its nearest-neighbour upsampling misplaces rows/columns. This one matches
//! PyTorch.
//!
//! Semantics follow PyTorch: the pooling gradient goes to the first maximum
//! of each window (row-major), the ReLU gradient is 1 where the output is
//! > 0 (candle's own relu uses x ≥ 0, which differs only at exact zeros).
//!
//! CPU only: the models reach these through [`super::max_pool2d`] and
//! [`super::relu`].

use super::conv_cpu::contiguous_slice;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Max pooling with a k×k window and stride k (no padding, floor mode), as
/// `torch.nn.MaxPool2d(k)` / candle's `max_pool2d(k)`, on x [B, C, H, W]
/// whose shape the door ([`super::max_pool2d`]) has checked.
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    x.apply_op1(MaxPool { k })
}

/// max(x, 0), differentiable (gradient 1 where the output is > 0).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.apply_op1(Relu)
}

/// Chunk length for parallel elementwise loops.
const PAR_CHUNK: usize = 1 << 14;

/// `f` of every element, in parallel chunks (the elementwise kernels here
/// and in `eval_cpu`).
pub(super) fn par_map<T: Copy + Send + Sync + Default>(x: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    let mut y = vec![T::default(); x.len()];
    y.par_chunks_mut(PAR_CHUNK).zip(x.par_chunks(PAR_CHUNK)).for_each(|(y, x)| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = f(x);
        }
    });
    y
}

macro_rules! dispatch1 {
    ($s:expr, $l:expr, $f:ident $(, $arg:expr)*) => {
        match $s {
            CpuStorage::F32(_) => CpuStorage::F32($f(&contiguous_slice::<f32>($s, $l)? $(, $arg)*)),
            CpuStorage::F64(_) => CpuStorage::F64($f(&contiguous_slice::<f64>($s, $l)? $(, $arg)*)),
            _ => bail!("f32 and f64 only, got {:?}", $s.dtype()),
        }
    };
}

macro_rules! dispatch2 {
    ($s1:expr, $l1:expr, $s2:expr, $l2:expr, $f:ident $(, $arg:expr)*) => {
        match ($s1, $s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32($f(&contiguous_slice::<f32>($s1, $l1)?, &contiguous_slice::<f32>($s2, $l2)? $(, $arg)*))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64($f(&contiguous_slice::<f64>($s1, $l1)?, &contiguous_slice::<f64>($s2, $l2)? $(, $arg)*))
            }
            _ => bail!("f32 and f64 only, got {:?} and {:?}", $s1.dtype(), $s2.dtype()),
        }
    };
}

fn relu_fwd<T: WithDType + Default>(x: &[T]) -> Vec<T> {
    par_map(x, |x| if x > T::zero() { x } else { T::zero() })
}

fn relu_bwd<T: WithDType>(g: &[T], y: &[T]) -> Vec<T> {
    let mut gx = vec![T::zero(); g.len()];
    gx.par_chunks_mut(PAR_CHUNK).zip(g.par_chunks(PAR_CHUNK).zip(y.par_chunks(PAR_CHUNK))).for_each(|(gx, (g, y))| {
        for ((gx, &g), &y) in gx.iter_mut().zip(g).zip(y) {
            *gx = if y > T::zero() { g } else { T::zero() };
        }
    });
    gx
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu-cpu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch1!(s, l, relu_fwd), l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.apply_op2(res, ReluBwd)?))
    }
}

/// (dL/dy, y) → dL/dx.
struct ReluBwd;

impl CustomOp2 for ReluBwd {
    fn name(&self) -> &'static str {
        "relu-cpu-bwd"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((dispatch2!(s1, l1, s2, l2, relu_bwd), l1.shape().clone()))
    }
}

/// Output size of one plane.
fn pooled(h: usize, w: usize, k: usize) -> (usize, usize) {
    (h / k, w / k)
}

fn pool_fwd<T: WithDType>(x: &[T], h: usize, w: usize, k: usize) -> Vec<T> {
    let (oh, ow) = pooled(h, w, k);
    let planes = x.len() / (h * w);
    let mut y = vec![T::zero(); planes * oh * ow];
    y.par_chunks_mut(oh * ow).zip(x.par_chunks(h * w)).for_each(|(y, x)| {
        for oy in 0..oh {
            let yrow = &mut y[oy * ow..(oy + 1) * ow];
            for (ox, m) in yrow.iter_mut().enumerate() {
                *m = x[oy * k * w + ox * k];
            }
            for dy in 0..k {
                let xrow = &x[(oy * k + dy) * w..(oy * k + dy + 1) * w];
                for (ox, m) in yrow.iter_mut().enumerate() {
                    for &v in &xrow[ox * k..ox * k + k] {
                        if v > *m {
                            *m = v;
                        }
                    }
                }
            }
        }
    });
    y
}

/// Routes each window's gradient to its first maximum (row-major), as
/// PyTorch; positions outside every window (floor mode) get 0.
fn pool_bwd<T: WithDType>(g: &[T], x: &[T], h: usize, w: usize, k: usize) -> Vec<T> {
    let (oh, ow) = pooled(h, w, k);
    let mut gx = vec![T::zero(); x.len()];
    gx.par_chunks_mut(h * w).zip(x.par_chunks(h * w).zip(g.par_chunks(oh * ow))).for_each(|(gx, (x, g))| {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = (oy * k) * w + ox * k;
                for dy in 0..k {
                    let row = (oy * k + dy) * w + ox * k;
                    for i in row..row + k {
                        if x[i] > x[best] {
                            best = i;
                        }
                    }
                }
                gx[best] += g[oy * ow + ox];
            }
        }
    });
    gx
}

struct MaxPool {
    k: usize,
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool2d-cpu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let (oh, ow) = pooled(h, w, self.k);
        Ok((dispatch1!(s, l, pool_fwd, h, w, self.k), Shape::from((b, c, oh, ow))))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.apply_op2(arg, MaxPoolBwd { k: self.k })?))
    }
}

/// (dL/dy, x) → dL/dx.
struct MaxPoolBwd {
    k: usize,
}

impl CustomOp2 for MaxPoolBwd {
    fn name(&self) -> &'static str {
        "max-pool2d-cpu-bwd"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, _, h, w) = l2.shape().dims4()?;
        Ok((dispatch2!(s1, l1, s2, l2, pool_bwd, h, w, self.k), l2.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn pool_and_relu_match_candle() {
        for dtype in [DType::F32, DType::F64] {
            for &(b, c, h, w, k) in &[(2, 3, 8, 8, 2), (2, 4, 7, 9, 2), (1, 2, 9, 9, 3)] {
                // Random values: no ties, no exact zeros, so the semantics agree.
                let x = Var::from_tensor(&Tensor::randn(0f64, 1., (b, c, h, w), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap();
                let ours = max_pool2d(&relu(&x).unwrap(), k).unwrap();
                // candle's max_pool2d backward upsamples with nearest
                // interpolation, which is wrong when k does not divide H, W:
                // compare on the part the windows cover (the rest must be 0).
                let (hc, wc) = (h / k * k, w / k * k);
                let xc = Var::from_tensor(&x.narrow(2, 0, hc).unwrap().narrow(3, 0, wc).unwrap().contiguous().unwrap()).unwrap();
                let theirs = xc.relu().unwrap().max_pool2d(k).unwrap();
                assert_eq!(max_abs_diff(&ours, &theirs), 0.);
                let r = Tensor::randn(0f64, 1., ours.dims(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let g2 = (theirs * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let gx = g1.get(&x).unwrap();
                let covered = gx.narrow(2, 0, hc).unwrap().narrow(3, 0, wc).unwrap();
                // candle 0.11's max_pool2d backward also scales the gradient by
                // 1/k² (it multiplies by the *fraction* of tied maxima, 1/k²
                // for a unique one): undo that for the comparison.
                let theirs_fixed = (g2.get(&xc).unwrap() * (k * k) as f64).unwrap();
                assert!(max_abs_diff(&covered, &theirs_fixed) < 1e-5);
                let total = gx.abs().unwrap().sum_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
                let inside = covered.abs().unwrap().sum_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
                assert!((total - inside).abs() <= 1e-5 * total, "gradient outside the pooling windows");
            }
        }
    }

    #[test]
    fn ties_go_to_the_first_maximum() {
        let x = Var::from_tensor(&Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let g = max_pool2d(&x, 2).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1., 0., 0., 0.]);
    }

    #[test]
    fn non_contiguous_and_errors() {
        let x = Tensor::randn(0f32, 1., (2, 6, 4, 3), &Device::Cpu).unwrap().transpose(1, 3).unwrap(); // [2, 3, 4, 6]
        assert_eq!(max_abs_diff(&max_pool2d(&x, 2).unwrap(), &x.max_pool2d(2).unwrap()), 0.);
        assert_eq!(max_abs_diff(&relu(&x).unwrap(), &x.relu().unwrap()), 0.);
        // Shapes are checked at the door.
        assert!(super::super::max_pool2d(&x.flatten_from(2).unwrap(), 2).is_err());
        assert!(super::super::max_pool2d(&x, 5).is_err());
        assert!(relu(&x.to_dtype(DType::BF16).unwrap()).is_err());
    }
}
