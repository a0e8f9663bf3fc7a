//! BatchNorm in training mode on the CPU as one fused op.
//!
//! candle_nn's `BatchNorm::forward_train` is a transpose and copy, two
//! means, a subtraction, a square, a division, a product and a sum, each a
//! separate single-threaded pass over the feature map, and its backward is
//! as many again; in a ResNet that made training 0.38× PyTorch's on the
//! CPU (BENCHMARKS.md). Here the forward is two parallel passes (the
//! channel statistics, then the output) and the backward two more (the
//! channel sums of dy and dy·x̂, then dx):
//!
//! ```text
//! x̂ = (x − μ_c) / sqrt(σ²_c + ε),  y = γ_c x̂ + β_c        (σ² biased, over B, H, W)
//! dβ_c = Σ dy,  dγ_c = Σ dy x̂,  dx = γ_c / (N sqrt(σ²_c + ε)) · (N dy − dβ_c − x̂ dγ_c)
//! ```
//!
//! The running statistics are updated as candle and PyTorch do:
//! `r ← (1 − m) r + m s` with the unbiased variance. Evaluation mode, other
//! devices and BatchNorms without an affine part use candle_nn's.

use super::conv_cpu::contiguous_slice;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, Var, WithDType};
use candle_nn::BatchNorm;
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// `bn.forward_t(x, true)` fused, for x [B, C, H, W] (or [B, C]) in f32/f64
/// on the CPU with an affine BatchNorm; `None` where it does not apply (the
/// caller, [`super::batch_norm`], then uses candle_nn's).
pub fn forward_train(bn: &BatchNorm, x: &Tensor) -> Result<Option<Tensor>> {
    let fused = x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) && (x.rank() == 4 || x.rank() == 2);
    let Some((gamma, beta)) = bn.weight_and_bias().filter(|_| fused) else {
        return Ok(None);
    };
    let c = x.dim(1)?;
    let n = x.elem_count() / c.max(1);
    if n < 2 || gamma.elem_count() != c {
        // One value per channel: candle's error (or its NaN variance) as before.
        return Ok(None);
    }
    let stats = Arc::new(Mutex::new(None));
    let op = BnTrain { eps: bn.eps(), stats: stats.clone() };
    let y = x.contiguous()?.apply_op3(gamma, beta, op)?;
    let Some(s) = lock(&stats)?.clone() else {
        bail!("batch norm: internal error, no statistics after the forward pass");
    };
    // The running statistics, in place in the model's variables.
    let m = bn.momentum();
    let unbias = n as f64 / (n as f64 - 1.0);
    let update = |running: &Tensor, batch: &[f64], scale: f64| -> Result<()> {
        let old = running.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let new: Vec<f64> = old.iter().zip(batch).map(|(r, v)| (1.0 - m) * r + m * v * scale).collect();
        let new = Tensor::from_vec(new, c, running.device())?.to_dtype(running.dtype())?;
        Var::from_tensor(running)?.set(&new)
    };
    update(bn.running_mean(), &s.mean, 1.0)?;
    update(bn.running_var(), &s.var, unbias)?;
    Ok(Some(y))
}

/// A value handed between the forward op, the backward op and the caller.
fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| candle_core::Error::Msg("batch norm: a lock was poisoned by a panic".into()))
}

/// Per-channel batch statistics of one forward pass.
#[derive(Clone)]
struct Stats {
    mean: Vec<f64>,
    /// Biased (divided by N).
    var: Vec<f64>,
    invstd: Vec<f64>,
}

/// (B, C, inner) of a contiguous [B, C, ...] layout.
fn geometry(l: &Layout) -> Result<(usize, usize, usize)> {
    let d = l.dims();
    if d.len() < 2 {
        bail!("batch norm: expected [B, C, ...], got {d:?}");
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

fn channel_stats<T: WithDType>(x: &[T], (b, c, inner): (usize, usize, usize), eps: f64) -> Stats {
    let n = (b * inner) as f64;
    let per: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let rows = || (0..b).map(move |i| &x[(i * c + ch) * inner..(i * c + ch + 1) * inner]);
            let mean = rows().map(|r| r.iter().map(|v| v.to_f64()).sum::<f64>()).sum::<f64>() / n;
            // Two passes: the sum of squared deviations, not E[x²] − μ².
            let var = rows().map(|r| r.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>()).sum::<f64>() / n;
            (mean, var)
        })
        .collect();
    let (mean, var): (Vec<f64>, Vec<f64>) = per.into_iter().unzip();
    let invstd = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    Stats { mean, var, invstd }
}

struct BnTrain {
    eps: f64,
    stats: Arc<Mutex<Option<Stats>>>,
}

fn vec_f64(s: &CpuStorage, l: &Layout) -> Result<Vec<f64>> {
    Ok(match s {
        CpuStorage::F32(_) => contiguous_slice::<f32>(s, l)?.iter().map(|&v| v as f64).collect(),
        CpuStorage::F64(_) => contiguous_slice::<f64>(s, l)?.to_vec(),
        _ => bail!("batch norm: f32 and f64 only, got {:?}", s.dtype()),
    })
}

fn forward<T: WithDType>(x: &[T], g: (usize, usize, usize), gamma: &[f64], beta: &[f64], s: &Stats) -> Vec<T> {
    let (_, c, inner) = g;
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(inner).zip(x.par_chunks(inner)).enumerate().for_each(|(row, (yr, xr))| {
        let ch = row % c;
        let (scale, shift) = (gamma[ch] * s.invstd[ch], beta[ch] - gamma[ch] * s.invstd[ch] * s.mean[ch]);
        for (o, v) in yr.iter_mut().zip(xr) {
            *o = T::from_f64(v.to_f64() * scale + shift);
        }
    });
    y
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "lintrace-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = geometry(xl)?;
        let (gamma, beta) = (vec_f64(gs, gl)?, vec_f64(bs, bl)?);
        if gamma.len() != g.1 || beta.len() != g.1 {
            bail!("batch norm: {} channels but weight {} and bias {}", g.1, gamma.len(), beta.len());
        }
        let (y, stats) = match xs {
            CpuStorage::F32(_) => {
                let x = contiguous_slice::<f32>(xs, xl)?;
                let s = channel_stats(&x, g, self.eps);
                (CpuStorage::F32(forward(&x, g, &gamma, &beta, &s)), s)
            }
            CpuStorage::F64(_) => {
                let x = contiguous_slice::<f64>(xs, xl)?;
                let s = channel_stats(&x, g, self.eps);
                (CpuStorage::F64(forward(&x, g, &gamma, &beta, &s)), s)
            }
            _ => bail!("batch norm: f32 and f64 only, got {:?}", xs.dtype()),
        };
        *lock(&self.stats)? = Some(stats);
        Ok((y, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = lock(&self.stats)?.clone();
        let Some(stats) = stats else { bail!("batch norm backward: no statistics (internal error)") };
        let sums = Arc::new(Mutex::new(None));
        let gamma_v = gamma.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let dx = x.apply_op2_no_bwd(&dy.contiguous()?, &BnBwd { stats, gamma: gamma_v, sums: sums.clone() })?;
        let Some((dgamma, dbeta)) = lock(&sums)?.take() else {
            bail!("batch norm backward: no parameter gradients (internal error)");
        };
        let c = gamma.elem_count();
        let as_param = |v: Vec<f64>, like: &Tensor| Tensor::from_vec(v, c, like.device())?.to_dtype(like.dtype())?.reshape(like.shape());
        Ok((x.track_op().then_some(dx), Some(as_param(dgamma, gamma)?), Some(as_param(dbeta, beta)?)))
    }
}

/// dx from (x, dy); dγ and dβ left in `sums`.
struct BnBwd {
    stats: Stats,
    gamma: Vec<f64>,
    sums: Arc<Mutex<Option<(Vec<f64>, Vec<f64>)>>>,
}

impl BnBwd {
    fn run<T: WithDType>(&self, x: &[T], dy: &[T], g: (usize, usize, usize)) -> (Vec<T>, Vec<f64>, Vec<f64>) {
        let (b, c, inner) = g;
        let n = (b * inner) as f64;
        let s = &self.stats;
        let (dgamma, dbeta): (Vec<f64>, Vec<f64>) = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut dg, mut db) = (0.0, 0.0);
                for i in 0..b {
                    let r = (i * c + ch) * inner..(i * c + ch + 1) * inner;
                    for (xv, gv) in x[r.clone()].iter().zip(&dy[r]) {
                        let gv = gv.to_f64();
                        db += gv;
                        dg += gv * (xv.to_f64() - s.mean[ch]) * s.invstd[ch];
                    }
                }
                (dg, db)
            })
            .unzip();
        let mut dx = vec![T::zero(); x.len()];
        dx.par_chunks_mut(inner).zip(x.par_chunks(inner).zip(dy.par_chunks(inner))).enumerate().for_each(|(row, (out, (xr, gr)))| {
            let ch = row % c;
            let k = self.gamma[ch] * s.invstd[ch] / n;
            for (o, (xv, gv)) in out.iter_mut().zip(xr.iter().zip(gr)) {
                let xhat = (xv.to_f64() - s.mean[ch]) * s.invstd[ch];
                *o = T::from_f64(k * (n * gv.to_f64() - dbeta[ch] - xhat * dgamma[ch]));
            }
        });
        (dx, dgamma, dbeta)
    }
}

impl CustomOp2 for BnBwd {
    fn name(&self) -> &'static str {
        "lintrace-batch-norm-train-bwd"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = geometry(xl)?;
        if gl.dims() != xl.dims() {
            bail!("batch norm backward: gradient {:?} does not match the input {:?}", gl.dims(), xl.dims());
        }
        let (dx, dg, db) = match (xs, gs) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (dx, dg, db) = self.run(&contiguous_slice::<f32>(xs, xl)?, &contiguous_slice::<f32>(gs, gl)?, g);
                (CpuStorage::F32(dx), dg, db)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (dx, dg, db) = self.run(&contiguous_slice::<f64>(xs, xl)?, &contiguous_slice::<f64>(gs, gl)?, g);
                (CpuStorage::F64(dx), dg, db)
            }
            _ => bail!("batch norm backward: f32 and f64 only, got {:?} and {:?}", xs.dtype(), gs.dtype()),
        };
        *lock(&self.sums)? = Some((dg, db));
        Ok((dx, xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::ModuleT;

    fn bn(c: usize, dev: &Device) -> Result<BatchNorm> {
        let rm = Var::from_tensor(&Tensor::randn(0f64, 0.5, c, dev)?)?;
        let rv = Var::from_tensor(&(Tensor::rand(0.5f64, 1.5, c, dev)?))?;
        let w = Var::from_tensor(&Tensor::randn(1f64, 0.3, c, dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f64, 0.3, c, dev)?)?;
        BatchNorm::new(c, rm.as_tensor().clone(), rv.as_tensor().clone(), w.as_tensor().clone(), b.as_tensor().clone(), 1e-5)
    }

    /// The fused op against candle_nn's composed one: output, running
    /// statistics and the gradients of a weighted sum wrt x, γ and β.
    #[test]
    fn matches_candle_nn() -> Result<()> {
        let dev = Device::Cpu;
        for dims in [vec![4usize, 3, 5, 6], vec![7, 5], vec![2, 4, 1, 3]] {
            let c = dims[1];
            let x = Var::from_tensor(&(Tensor::randn(0.3f64, 2.0, dims.as_slice(), &dev)?))?;
            let r = Tensor::randn(0f64, 1.0, dims.as_slice(), &dev)?;
            let (ours, theirs) = (bn(c, &dev)?, bn(c, &dev)?);
            // Same parameters and running statistics in both.
            for (a, b) in [(ours.running_mean(), theirs.running_mean()), (ours.running_var(), theirs.running_var())] {
                Var::from_tensor(b)?.set(a)?;
            }
            let (ow, ob) = ours.weight_and_bias().expect("affine");
            let (tw, tb) = theirs.weight_and_bias().expect("affine");
            Var::from_tensor(tw)?.set(ow)?;
            Var::from_tensor(tb)?.set(ob)?;
            let y = super::super::batch_norm(&ours, x.as_tensor(), true)?;
            let y_ref = theirs.forward_t(x.as_tensor(), true)?;
            let close = |a: &Tensor, b: &Tensor, what: &str| -> Result<()> {
                let d = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
                assert!(d < 1e-10, "{what} {dims:?}: max diff {d}");
                Ok(())
            };
            close(&y, &y_ref, "y")?;
            close(ours.running_mean(), theirs.running_mean(), "running mean")?;
            close(ours.running_var(), theirs.running_var(), "running var")?;
            let g = (&y * &r)?.sum_all()?.backward()?;
            let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;
            close(g.get(x.as_tensor()).expect("dx"), g_ref.get(x.as_tensor()).expect("dx ref"), "dx")?;
            close(g.get(ow).expect("dγ"), g_ref.get(tw).expect("dγ ref"), "dγ")?;
            close(g.get(ob).expect("dβ"), g_ref.get(tb).expect("dβ ref"), "dβ")?;
        }
        Ok(())
    }

    /// Evaluation mode is candle_nn's (running statistics, nothing updated).
    #[test]
    fn evaluation_mode_is_unchanged() -> Result<()> {
        let dev = Device::Cpu;
        let b = bn(3, &dev)?;
        let x = Tensor::randn(0f64, 1.0, (2, 3, 4, 4), &dev)?;
        let before = b.running_mean().to_vec1::<f64>()?;
        let d = (super::super::batch_norm(&b, &x, false)? - b.forward_t(&x, false)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
        assert_eq!(d, 0.0);
        assert_eq!(b.running_mean().to_vec1::<f64>()?, before);
        Ok(())
    }
}
