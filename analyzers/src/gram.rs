//! Centred Gram matrices of a tap's representation over the probe, and what
//! is computed from them: linear CKA (Kornblith et al., 2019) and the
//! effective rank (Roy & Vetterli, 2007).
//!
//! The Gram matrix is built and centred with tensor operations on the device
//! the activations live on (f64 matrix products there), and CKA is reduced
//! there too; only the effective rank's eigenvalues are computed on the host
//! (faer), from one n × n copy.

use candle_core::{DType, Device, Result, Tensor};

/// H K H for K = A Aᵀ, A the n × features post-activations; f64, n × n, on
/// the device of A.
#[derive(Debug, Clone)]
pub struct Gram {
    pub n: usize,
    pub k: Tensor,
}

/// Features per f64 block: memory stays n × BLOCK in f64, not n × f.
const BLOCK: usize = 2048;

impl Gram {
    /// From the whole probe's activations, given as row chunks (each
    /// `[samples, …]`, in probe order) on one device. Accumulated in f64
    /// over blocks of features: an f32 product would put noise eigenvalues
    /// at ~1e-7 of the largest, which the effective rank counts as real
    /// directions.
    pub fn from_chunks(chunks: &[Tensor]) -> Result<Gram> {
        let flat: Vec<Tensor> = chunks.iter().map(|c| c.flatten_from(1)).collect::<Result<_>>()?;
        let Some(first) = flat.first() else { candle_core::bail!("Gram of an empty probe") };
        let f = first.dim(1)?;
        let n: usize = flat.iter().map(|c| c.dim(0)).sum::<Result<usize>>()?;
        // The features are centred before the product, not only the Gram
        // after it: centring a Gram of uncentred features cancels terms of
        // the size of the mean², leaving rounding far above the centred
        // spectrum's small eigenvalues.
        let mut sum = Tensor::zeros(f, DType::F64, first.device())?;
        for c in &flat {
            sum = (sum + c.to_dtype(DType::F64)?.sum(0)?)?;
        }
        let mean = (sum / n.max(1) as f64)?;
        if first.device().is_cpu() {
            let mean: Vec<f64> = mean.to_vec1()?;
            return Ok(Gram { n, k: center(&host_gram(&flat, n, f, &mean)?)? });
        }
        let mut k = Tensor::zeros((n, n), DType::F64, first.device())?;
        let mut start = 0;
        while start < f {
            let w = BLOCK.min(f - start);
            let parts: Vec<Tensor> = flat.iter().map(|c| c.narrow(1, start, w)).collect::<Result<_>>()?;
            let blk = Tensor::cat(&parts, 0)?.to_dtype(DType::F64)?.broadcast_sub(&mean.narrow(0, start, w)?.unsqueeze(0)?)?;
            k = (k + blk.matmul(&blk.t()?)?)?;
            start += w;
        }
        Ok(Gram { n, k: center(&k)? })
    }

    /// From a row-major n × f host matrix (tests, small inputs), on the CPU.
    pub fn from_rows(n: usize, f: usize, data: &[f32]) -> Result<Gram> {
        Gram::from_chunks(&[Tensor::from_slice(data, (n, f), &Device::Cpu)?])
    }

    /// ⟨self, other⟩_F, reduced on the device.
    pub fn dot(&self, other: &Gram) -> Result<f64> {
        let other = other.k.to_device(self.k.device())?;
        (&self.k * &other)?.sum_all()?.to_scalar::<f64>()
    }
}

/// A Aᵀ on the CPU with faer's triangular product: only the lower triangle
/// is computed (half the multiply-adds of a full product, which candle's
/// matmul would do), then mirrored.
fn host_gram(flat: &[Tensor], n: usize, f: usize, mean: &[f64]) -> Result<Tensor> {
    use faer::linalg::matmul::triangular::{matmul, BlockStructure};
    let mut k = faer::Mat::<f64>::zeros(n, n);
    let mut start = 0;
    while start < f {
        let w = BLOCK.min(f - start);
        // Row-major, filled row by row (a column-major fill would stride
        // through memory n values at a time).
        let mut buf: Vec<f64> = Vec::with_capacity(n * w);
        for c in flat {
            let m = &mean[start..start + w];
            crate::stats::with_cpu_f32(&c.narrow(1, start, w)?, |v| {
                buf.extend(v.chunks_exact(w).flat_map(|row| row.iter().zip(m).map(|(&x, &mu)| x as f64 - mu)))
            })?;
        }
        let blk = faer::MatRef::from_row_major_slice(&buf, n, w);
        matmul(
            k.as_mut(),
            BlockStructure::TriangularLower,
            faer::Accum::Add,
            blk,
            BlockStructure::Rectangular,
            blk.transpose(),
            BlockStructure::Rectangular,
            1.0,
            crate::faer_par(),
        );
        start += w;
    }
    let mut out = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            out[i * n + j] = k[(i, j)];
            out[j * n + i] = k[(i, j)];
        }
    }
    Tensor::from_vec(out, (n, n), &Device::Cpu)
}

/// H K H with H = I − 11ᵀ/n.
pub fn center(k: &Tensor) -> Result<Tensor> {
    let row = k.mean_keepdim(1)?;
    let col = k.mean_keepdim(0)?;
    let total = row.mean_all()?.to_scalar::<f64>()?;
    k.broadcast_sub(&row)?.broadcast_sub(&col)? + total
}

/// Linear CKA from two centred Grams; None when either representation is
/// constant on the probe.
pub fn cka(x: &Gram, y: &Gram) -> Result<Option<f64>> {
    let (xy, xx, yy) = (x.dot(y)?, x.dot(x)?, y.dot(y)?);
    let denom = (xx * yy).sqrt();
    Ok((denom > 0.0 && denom.is_finite()).then(|| xy / denom))
}

/// exp(entropy) of the normalised singular values of the centred
/// representation, whose squares are the eigenvalues of the centred Gram.
/// Singular values below 1e-12 × the largest count as zero, as in the
/// reference (an SVD of the representation itself); so do those the Gram
/// route cannot resolve: an eigensolver's error is about n·ε·λ_max, so
/// eigenvalues below that, singular values below √(n·ε)·s_max, are rounding.
/// Without this, an n × f representation (f < n) gets n − f spurious
/// singular values near 1e-8·s_max, which inflate the rank (a property test
/// found 1.0000003 for a rank-one representation).
pub fn effective_rank(g: &Gram) -> Result<Option<f64>> {
    let v: Vec<f64> = g.k.flatten_all()?.to_vec1()?;
    Ok(effective_rank_host(&v, g.n))
}

/// [`effective_rank`] of an n × n centred Gram matrix already on the host
/// (row-major), so that several taps' eigenvalue problems can run at once.
pub fn effective_rank_host(v: &[f64], n: usize) -> Option<f64> {
    let m = faer::MatRef::from_row_major_slice(v, n, n);
    let Ok(eig) = m.self_adjoint_eigenvalues(faer::Side::Lower) else { return None };
    let s: Vec<f64> = eig.iter().map(|&l| l.max(0.0).sqrt()).collect();
    let max = s.iter().cloned().fold(0.0, f64::max);
    if max <= 0.0 {
        return None;
    }
    let resolvable = (n as f64 * f64::EPSILON).sqrt().max(1e-12);
    let kept: Vec<f64> = s.into_iter().filter(|&v| v > resolvable * max).collect();
    let total: f64 = kept.iter().sum();
    let h: f64 = kept
        .iter()
        .map(|&v| {
            let p = v / total;
            -p * p.ln()
        })
        .sum();
    Some(h.exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_gram_equals_whole_and_wide_features_are_blocked() {
        let (n, f) = (9, BLOCK + 37);
        let data: Vec<f32> = (0..n * f).map(|i| ((i * 7919) % 997) as f32 / 500.0 - 1.0).collect();
        let whole = Gram::from_rows(n, f, &data).unwrap();
        let a = Tensor::from_slice(&data, (n, f), &Device::Cpu).unwrap();
        let chunks = [a.narrow(0, 0, 4).unwrap(), a.narrow(0, 4, 5).unwrap()];
        let parts = Gram::from_chunks(&chunks).unwrap();
        // The device path (full product through candle's matmul) on the CPU.
        let mut k = Tensor::zeros((n, n), DType::F64, &Device::Cpu).unwrap();
        for start in (0..f).step_by(BLOCK) {
            let blk = a.narrow(1, start, BLOCK.min(f - start)).unwrap().to_dtype(DType::F64).unwrap();
            k = (k + blk.matmul(&blk.t().unwrap()).unwrap()).unwrap();
        }
        let device_path: Vec<f64> = center(&k).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let (w, p): (Vec<f64>, Vec<f64>) =
            (whole.k.flatten_all().unwrap().to_vec1().unwrap(), parts.k.flatten_all().unwrap().to_vec1().unwrap());
        // Reference: centred A Aᵀ in f64 by the definition.
        let mean: Vec<f64> = (0..f).map(|j| (0..n).map(|i| data[i * f + j] as f64).sum::<f64>() / n as f64).collect();
        for i in 0..n {
            for j in 0..n {
                let r: f64 = (0..f).map(|c| (data[i * f + c] as f64 - mean[c]) * (data[j * f + c] as f64 - mean[c])).sum();
                assert!((w[i * n + j] - r).abs() < 1e-9 * r.abs().max(1.0), "({i},{j}): {} vs {r}", w[i * n + j]);
                assert!((p[i * n + j] - r).abs() < 1e-9 * r.abs().max(1.0));
                assert!((device_path[i * n + j] - r).abs() < 1e-9 * r.abs().max(1.0));
            }
        }
    }
}
