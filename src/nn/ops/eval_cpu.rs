//! Forward-only CPU kernels for passes that record no gradient (the
//! analysis of a checkpoint): the elementwise activations, LayerNorm and
//! RMSNorm, and a causal softmax, each split over the cores with rayon.
//! candle's own CPU versions of these run on one core, or (its softmax) after
//! separate passes for the scale and the mask; on a 160M-parameter language
//! model they were a fifth of the forward pass (BENCHMARKS.md, "Hugging Face
//! language models on the CPU").
//!
//! The activations compute candle's own formulas (the same erf), so they
//! give its results to the bit. The norms accumulate in f64. The door
//! ([`super::gelu_erf`] and the others) sends only tensors that track no
//! gradient here; training keeps candle's differentiable operations.

use super::conv_cpu::contiguous_slice;
use super::pool_cpu::par_map;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
pub enum Unary {
    GeluErf,
    GeluTanh,
    Silu,
}

impl Unary {
    fn f32(self, v: f32) -> f32 {
        match self {
            Unary::GeluErf => (candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * v,
            Unary::GeluTanh => {
                const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
                0.5 * v * (1.0 + f32::tanh(SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v)))
            }
            Unary::Silu => v / (1. + (-v).exp()),
        }
    }
    fn f64(self, v: f64) -> f64 {
        match self {
            Unary::GeluErf => (candle_core::cpu::erf::erf_f64(v * std::f64::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * v,
            Unary::GeluTanh => {
                let sqrt_two_over_pi = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * v * (1.0 + f64::tanh(sqrt_two_over_pi * v * (1.0 + 0.044715 * v * v)))
            }
            Unary::Silu => v / (1. + (-v).exp()),
        }
    }
}

impl CustomOp1 for Unary {
    fn name(&self) -> &'static str {
        "unary-eval-cpu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(par_map(&contiguous_slice::<f32>(s, l)?, |v| self.f32(v))),
            CpuStorage::F64(_) => CpuStorage::F64(par_map(&contiguous_slice::<f64>(s, l)?, |v| self.f64(v))),
            _ => bail!("f32 and f64 only, got {:?}", s.dtype()),
        };
        Ok((out, l.shape().clone()))
    }
}

pub fn unary(x: &Tensor, op: Unary) -> Result<Tensor> {
    x.apply_op1_no_bwd(&op)
}

/// LayerNorm ((x − mean) / sqrt(var + eps), biased variance) or RMSNorm
/// (x / sqrt(mean(x²) + eps)) over the last dimension, then × weight + bias
/// where given (each as long as the last dimension).
pub struct Norm {
    pub rms: bool,
    pub eps: f64,
    pub weight: Option<Vec<f64>>,
    pub bias: Option<Vec<f64>>,
}

impl Norm {
    fn row<T: Copy + Into<f64>>(&self, x: &[T], y: &mut [T], from: impl Fn(f64) -> T) {
        let n = x.len() as f64;
        let mean = if self.rms { 0.0 } else { x.iter().map(|&v| v.into()).sum::<f64>() / n };
        let var = x.iter().map(|&v| (v.into() - mean).powi(2)).sum::<f64>() / n;
        let inv = 1.0 / (var + self.eps).sqrt();
        for (j, (y, &v)) in y.iter_mut().zip(x).enumerate() {
            let mut o = (v.into() - mean) * inv;
            if let Some(w) = &self.weight {
                o *= w[j];
            }
            if let Some(b) = &self.bias {
                o += b[j];
            }
            *y = from(o);
        }
    }
}

impl CustomOp1 for Norm {
    fn name(&self) -> &'static str {
        "norm-eval-cpu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = *l.dims().last().unwrap_or(&1);
        if d == 0 || self.weight.as_ref().is_some_and(|w| w.len() != d) || self.bias.as_ref().is_some_and(|b| b.len() != d) {
            bail!(
                "norm over {d} features with {:?} weights and {:?} biases",
                self.weight.as_ref().map(Vec::len),
                self.bias.as_ref().map(Vec::len)
            );
        }
        fn rows<T: Copy + Send + Sync + Default + Into<f64>>(x: &[T], d: usize, f: impl Fn(&[T], &mut [T]) + Sync) -> Vec<T> {
            let mut y = vec![T::default(); x.len()];
            y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| f(x, y));
            y
        }
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(rows(&contiguous_slice::<f32>(s, l)?, d, |x, y| self.row(x, y, |v| v as f32))),
            CpuStorage::F64(_) => CpuStorage::F64(rows(&contiguous_slice::<f64>(s, l)?, d, |x, y| self.row(x, y, |v| v))),
            _ => bail!("f32 and f64 only, got {:?}", s.dtype()),
        };
        Ok((out, l.shape().clone()))
    }
}

pub fn norm(x: &Tensor, op: Norm) -> Result<Tensor> {
    x.apply_op1_no_bwd(&op)
}

/// softmax over the last dimension of `scale · scores` [.., t, t] where key
/// j may be attended from query i only when j ≤ i; the other weights are 0.
/// (The same as adding −∞ above the diagonal first.)
pub struct CausalSoftmax {
    pub scale: f64,
}

impl CausalSoftmax {
    /// The f64 rows, in f64 throughout. y[i + 1..] of row i stays 0.
    fn rows_f64(&self, x: &[f64], t: usize) -> Vec<f64> {
        let mut y = vec![0f64; x.len()];
        y.par_chunks_mut(t).zip(x.par_chunks(t)).enumerate().for_each(|(r, (y, x))| {
            let i = r % t;
            let s = |j: usize| x[j] * self.scale;
            let max = (0..=i).map(s).fold(f64::NEG_INFINITY, f64::max);
            let mut sum = 0.0;
            for j in 0..=i {
                let e = (s(j) - max).exp();
                sum += e;
                y[j] = e;
            }
            for v in &mut y[..=i] {
                *v /= sum;
            }
        });
        y
    }

    /// The f32 rows with f32 exponentials (as PyTorch's softmax computes
    /// them) and an f64 sum: f64 `exp` had been 6% of a 160M forward pass.
    /// The weights differ from the f64 path by a few f32 ulps.
    fn rows_f32(&self, x: &[f32], t: usize) -> Vec<f32> {
        let scale = self.scale as f32;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(t).zip(x.par_chunks(t)).enumerate().for_each(|(r, (y, x))| {
            let i = r % t;
            let (y, x) = (&mut y[..=i], &x[..=i]);
            let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
            let mut sum = 0f64;
            for (y, &v) in y.iter_mut().zip(x) {
                let e = (v * scale - max).exp();
                sum += e as f64;
                *y = e;
            }
            let inv = (1.0 / sum) as f32;
            for v in y.iter_mut() {
                *v *= inv;
            }
        });
        y
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax-eval-cpu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let (t, q) = (dims[dims.len() - 1], dims[dims.len().saturating_sub(2)]);
        if dims.len() < 2 || t != q || t == 0 {
            bail!("causal softmax of scores {dims:?}: the last two dimensions must be queries = keys");
        }
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(self.rows_f32(&contiguous_slice::<f32>(s, l)?, t)),
            CpuStorage::F64(_) => CpuStorage::F64(self.rows_f64(&contiguous_slice::<f64>(s, l)?, t)),
            _ => bail!("f32 and f64 only, got {:?}", s.dtype()),
        };
        Ok((out, l.shape().clone()))
    }
}

pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    scores.apply_op1_no_bwd(&CausalSoftmax { scale })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, D};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn activations_are_candles_to_the_bit() {
        let x = (Tensor::randn(0f32, 3.0, (7, 3001), &Device::Cpu).unwrap()).narrow(1, 1, 3000).unwrap();
        assert_eq!(max_diff(&unary(&x, Unary::GeluErf).unwrap(), &x.gelu_erf().unwrap()), 0.0);
        assert_eq!(max_diff(&unary(&x, Unary::GeluTanh).unwrap(), &x.gelu().unwrap()), 0.0);
        assert!(max_diff(&unary(&x, Unary::Silu).unwrap(), &x.silu().unwrap()) < 1e-6);
    }

    #[test]
    fn norms_and_softmax_match_the_composed_operations() {
        let x = (Tensor::randn(0f64, 1.0, (3, 5, 16), &Device::Cpu).unwrap() + 4.0).unwrap();
        let w: Vec<f64> = (0..16).map(|i| 0.5 + i as f64 / 16.0).collect();
        let b: Vec<f64> = (0..16).map(|i| i as f64 / 8.0 - 1.0).collect();
        let (wt, bt) = (Tensor::new(w.as_slice(), &Device::Cpu).unwrap(), Tensor::new(b.as_slice(), &Device::Cpu).unwrap());
        let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1).unwrap()).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let ln = xc.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(&wt).unwrap().broadcast_add(&bt).unwrap();
        let ours = norm(&x, Norm { rms: false, eps: 1e-5, weight: Some(w.clone()), bias: Some(b) }).unwrap();
        assert!(max_diff(&ours, &ln) < 1e-12);
        let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let rms = x.broadcast_div(&(ms + 1e-6).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(&wt).unwrap();
        assert!(max_diff(&norm(&x, Norm { rms: true, eps: 1e-6, weight: Some(w), bias: None }).unwrap(), &rms) < 1e-12);

        let t = 6;
        let s = Tensor::randn(0f64, 2.0, (2, 3, t, t), &Device::Cpu).unwrap();
        let mask: Vec<f64> = (0..t * t).map(|ij| if ij % t > ij / t { f64::NEG_INFINITY } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
        let want = candle_nn::ops::softmax_last_dim(&(s.clone() * 0.3).unwrap().broadcast_add(&mask).unwrap()).unwrap();
        assert!(max_diff(&causal_softmax(&s, 0.3).unwrap(), &want) < 1e-12);
        // The f32 path (f32 exponentials, f64 sum) against the same f64
        // weights: within a few f32 ulps of values at most 1.
        let s32 = s.to_dtype(DType::F32).unwrap();
        let ours32 = causal_softmax(&s32, 0.3).unwrap().to_dtype(DType::F64).unwrap();
        assert!(max_diff(&ours32, &want) < 1e-6, "{}", max_diff(&ours32, &want));
        let upper: Vec<f32> = ours32.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(upper.iter().enumerate().all(|(ij, &v)| ij % t <= (ij / t) % t || v == 0.0));
    }
}
