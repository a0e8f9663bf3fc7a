//! Centred Gram matrices of a tap's representation over the probe, and what
//! is computed from them: linear CKA (Kornblith et al., 2019) and the
//! effective rank (Roy & Vetterli, 2007).
//!
//! A representation of `n` samples × `f` features is kept in whichever
//! space is smaller: the n × n centred Gram matrix K = X_c X_cᵀ when n ≤ f,
//! or, when n > f (a transformer's (sequence, position) rows), the
//! activations themselves with their f × f covariance C = X_cᵀ X_c. Both
//! give the same numbers: ⟨K_x, K_y⟩_F = ‖X_cᵀ Y_c‖²_F, and K and C share
//! their non-zero eigenvalues. So memory grows with n·min(n, f), never n²
//! once n exceeds the width (a long context's n·T rows would not fit as an
//! n·T × n·T matrix).
//!
//! Products run as tensor operations in f64 on the device the activations
//! live on, and CKA is reduced there; only the effective rank's eigenvalues
//! are computed on the host (faer), from one n × n or f × f copy.

use candle_core::{DType, Device, Result, Tensor};

/// A centred representation of `n` samples, in sample or feature space.
#[derive(Debug, Clone)]
pub struct Gram {
    pub n: usize,
    repr: Repr,
}

#[derive(Debug, Clone)]
enum Repr {
    /// H K H for K = A Aᵀ: f64, n × n.
    Samples(Tensor),
    /// The uncentred activations `x` (f32, n × f), their mean (f64, f) and
    /// C = (x − mean)ᵀ(x − mean) (f64, f × f).
    Features { x: Tensor, mean: Tensor, c: Tensor },
}

/// Features per f64 block: memory stays n × BLOCK in f64, not n × f.
const BLOCK: usize = 2048;
/// Rows per f64 block of a feature-space product.
const ROWS: usize = 8192;

impl Gram {
    /// From the whole probe's activations, given as row chunks (each
    /// `[samples, …]`, in probe order) on one device. Accumulated in f64: an
    /// f32 product would put noise eigenvalues at ~1e-7 of the largest,
    /// which the effective rank counts as real directions.
    pub fn from_chunks(chunks: &[Tensor]) -> Result<Gram> {
        Gram::build(chunks, None)
    }

    /// `feature_space`: forced (tests), or chosen by n > f when `None`.
    fn build(chunks: &[Tensor], feature_space: Option<bool>) -> Result<Gram> {
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
        if feature_space.unwrap_or(n > f) {
            let x = Tensor::cat(&flat, 0)?.to_dtype(DType::F32)?;
            let c = if x.device().is_cpu() { host_covariance(&x, &mean.to_vec1()?)? } else { cross(&x, &mean, &x, &mean)? };
            return Ok(Gram { n, repr: Repr::Features { x, mean, c } });
        }
        if first.device().is_cpu() {
            let mean: Vec<f64> = mean.to_vec1()?;
            return Ok(Gram { n, repr: Repr::Samples(center(&host_gram(&flat, n, f, &mean)?)?) });
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
        Ok(Gram { n, repr: Repr::Samples(center(&k)?) })
    }

    /// From a row-major n × f host matrix (tests, small inputs), on the CPU.
    pub fn from_rows(n: usize, f: usize, data: &[f32]) -> Result<Gram> {
        Gram::from_chunks(&[Tensor::from_slice(data, (n, f), &Device::Cpu)?])
    }

    /// Kept in feature space (n > features).
    pub fn is_feature_space(&self) -> bool {
        matches!(self.repr, Repr::Features { .. })
    }

    /// ⟨K_self, K_other⟩_F of the two centred n × n Grams, reduced on the
    /// device (in feature space ‖X_cᵀ Y_c‖²_F, which needs both sets of
    /// activations but never an n × n matrix).
    pub fn dot(&self, other: &Gram) -> Result<f64> {
        if self.n != other.n {
            candle_core::bail!("Gram matrices of {} and {} samples", self.n, other.n);
        }
        match (&self.repr, &other.repr) {
            (Repr::Samples(a), Repr::Samples(b)) => (a * b.to_device(a.device())?)?.sum_all()?.to_scalar::<f64>(),
            (Repr::Features { c, .. }, Repr::Features { .. }) if std::ptr::eq(self, other) => c.sqr()?.sum_all()?.to_scalar::<f64>(),
            (Repr::Features { x, mean, .. }, Repr::Features { x: y, mean: my, .. }) => {
                let dev = x.device();
                cross(x, mean, &y.to_device(dev)?, &my.to_device(dev)?)?.sqr()?.sum_all()?.to_scalar::<f64>()
            }
            // Mixed (representations of different widths): ⟨K_y, X_c X_cᵀ⟩ =
            // Σ (K_y X_c) ⊙ X_c, with the n × n side given.
            (Repr::Samples(k), Repr::Features { x, mean, .. }) | (Repr::Features { x, mean, .. }, Repr::Samples(k)) => {
                let xc = x.to_dtype(DType::F64)?.broadcast_sub(&mean.unsqueeze(0)?)?.to_device(k.device())?;
                (k.matmul(&xc)? * &xc)?.sum_all()?.to_scalar::<f64>()
            }
        }
    }

    /// The centred matrix whose eigenvalues are the squared singular values
    /// of the centred representation, on the host, row-major: K (n × n) or
    /// C (f × f); with its side.
    pub fn host_matrix(&self) -> Result<(Vec<f64>, usize)> {
        let m = match &self.repr {
            Repr::Samples(k) => k,
            Repr::Features { c, .. } => c,
        };
        Ok((m.flatten_all()?.to_vec1::<f64>()?, m.dim(0)?))
    }
}

/// (x − mx)ᵀ(y − my) in f64 over blocks of rows: [fx, fy].
fn cross(x: &Tensor, mx: &Tensor, y: &Tensor, my: &Tensor) -> Result<Tensor> {
    let (n, fx) = x.dims2()?;
    let fy = y.dim(1)?;
    let mut acc = Tensor::zeros((fx, fy), DType::F64, x.device())?;
    let mut start = 0;
    while start < n {
        let w = ROWS.min(n - start);
        let xb = x.narrow(0, start, w)?.to_dtype(DType::F64)?.broadcast_sub(&mx.unsqueeze(0)?)?;
        let yb =
            if std::ptr::eq(x, y) { xb.clone() } else { y.narrow(0, start, w)?.to_dtype(DType::F64)?.broadcast_sub(&my.unsqueeze(0)?)? };
        acc = (acc + xb.t()?.matmul(&yb)?)?;
        start += w;
    }
    Ok(acc)
}

/// (x − mean)ᵀ(x − mean) of an n × f f32 matrix on the CPU, in f64 over
/// blocks of rows, with faer's triangular product (the lower triangle, half
/// the multiply-adds of [`cross`]'s full product), then mirrored.
fn host_covariance(x: &Tensor, mean: &[f64]) -> Result<Tensor> {
    let f = x.dim(1)?;
    let mut c = faer::Mat::<f64>::zeros(f, f);
    crate::stats::with_cpu_f32(x, |v| {
        for rows in v.chunks(ROWS * f) {
            let w = rows.len() / f;
            let buf: Vec<f64> = rows.chunks_exact(f).flat_map(|row| row.iter().zip(mean).map(|(&x, &mu)| x as f64 - mu)).collect();
            add_lower_product(&mut c, faer::MatRef::from_row_major_slice(&buf, w, f).transpose());
        }
    })?;
    Tensor::from_vec(mirror_lower(&c), (f, f), &Device::Cpu)
}

/// acc += a aᵀ, the lower triangle only (faer's triangular product: half the
/// multiply-adds of a full one).
fn add_lower_product(acc: &mut faer::Mat<f64>, a: faer::MatRef<'_, f64>) {
    use faer::linalg::matmul::triangular::{matmul, BlockStructure};
    matmul(
        acc.as_mut(),
        BlockStructure::TriangularLower,
        faer::Accum::Add,
        a,
        BlockStructure::Rectangular,
        a.transpose(),
        BlockStructure::Rectangular,
        1.0,
        crate::faer_par(),
    );
}

/// A full row-major copy of a matrix whose lower triangle is set.
fn mirror_lower(k: &faer::Mat<f64>) -> Vec<f64> {
    let n = k.nrows();
    let mut out = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            out[i * n + j] = k[(i, j)];
            out[j * n + i] = k[(i, j)];
        }
    }
    out
}

/// A Aᵀ on the CPU with faer's triangular product: only the lower triangle
/// is computed (half the multiply-adds of a full product, which candle's
/// matmul would do), then mirrored.
fn host_gram(flat: &[Tensor], n: usize, f: usize, mean: &[f64]) -> Result<Tensor> {
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
        add_lower_product(&mut k, faer::MatRef::from_row_major_slice(&buf, n, w));
        start += w;
    }
    Tensor::from_vec(mirror_lower(&k), (n, n), &Device::Cpu)
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
/// representation, whose squares are the eigenvalues of the centred Gram
/// (or of the feature covariance: the same non-zero eigenvalues).
/// Singular values below 1e-12 × the largest count as zero, as in the
/// reference (an SVD of the representation itself); so do those the Gram
/// route cannot resolve: an eigensolver's error is about n·ε·λ_max, so
/// eigenvalues below that, singular values below √(n·ε)·s_max, are rounding.
/// Without this, an n × f representation (f < n) gets n − f spurious
/// singular values near 1e-8·s_max, which inflate the rank (a property test
/// found 1.0000003 for a rank-one representation).
pub fn effective_rank(g: &Gram) -> Result<Option<f64>> {
    let (v, side) = g.host_matrix()?;
    Ok(effective_rank_host(&v, side, g.n))
}

/// [`effective_rank`] of a `side` × `side` centred Gram or covariance matrix
/// of `n` samples, already on the host (row-major), so that several taps'
/// eigenvalue problems can run at once.
pub fn effective_rank_host(v: &[f64], side: usize, n: usize) -> Option<f64> {
    let m = faer::MatRef::from_row_major_slice(v, side, side);
    let Ok(eig) = m.self_adjoint_eigenvalues(faer::Side::Lower) else { return None };
    let s: Vec<f64> = eig.iter().map(|&l| l.max(0.0).sqrt()).collect();
    let max = s.iter().cloned().fold(0.0, f64::max);
    if max <= 0.0 {
        return None;
    }
    let resolvable = (n.max(side) as f64 * f64::EPSILON).sqrt().max(1e-12);
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
        let (w, p) = (whole.host_matrix().unwrap().0, parts.host_matrix().unwrap().0);
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

    #[test]
    fn feature_space_gives_the_sample_space_numbers() {
        // n > f: both spaces are valid; CKA's inner products and the
        // effective rank must agree (K and C share their non-zero spectrum).
        let (n, f) = (50, 8);
        let x: Vec<f32> = (0..n * f).map(|i| ((i * 7919 + 13) % 997) as f32 / 300.0 - 1.5).collect();
        let y: Vec<f32> = x.iter().enumerate().map(|(i, &v)| v * 0.7 + ((i * 31) % 17) as f32 / 20.0 + 3.0).collect();
        let t = |d: &[f32]| {
            [
                Tensor::from_slice(&d[..20 * f], (20, f), &Device::Cpu).unwrap(),
                Tensor::from_slice(&d[20 * f..], (30, f), &Device::Cpu).unwrap(),
            ]
        };
        let (sx, sy) = (Gram::build(&t(&x), Some(false)).unwrap(), Gram::build(&t(&y), Some(false)).unwrap());
        let (fx, fy) = (Gram::from_chunks(&t(&x)).unwrap(), Gram::from_chunks(&t(&y)).unwrap());
        assert!(fx.is_feature_space() && !sx.is_feature_space());
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-10 * a.abs().max(b.abs()).max(1.0);
        for (a, b) in [
            (sx.dot(&sy).unwrap(), fx.dot(&fy).unwrap()),
            (sx.dot(&sx).unwrap(), fx.dot(&fx).unwrap()),
            (sy.dot(&sy).unwrap(), fy.dot(&fy).unwrap()),
        ] {
            assert!(close(a, b), "{a} vs {b}");
        }
        // The self inner product via C equals the cross product route.
        let fx2 = fx.clone();
        assert!(close(fx.dot(&fx2).unwrap(), fx.dot(&fx).unwrap()));
        let (cs, cf) = (cka(&sx, &sy).unwrap().unwrap(), cka(&fx, &fy).unwrap().unwrap());
        assert!(close(cs, cf) && cs > 0.1 && cs < 1.0, "{cs} vs {cf}");
        let (rs, rf) = (effective_rank(&sx).unwrap().unwrap(), effective_rank(&fx).unwrap().unwrap());
        assert!((rs - rf).abs() < 1e-9 * rs, "{rs} vs {rf}");
        // Mixed spaces (different widths in practice) give the same numbers.
        assert!(close(sx.dot(&fy).unwrap(), fx.dot(&fy).unwrap()) && close(fy.dot(&sx).unwrap(), sx.dot(&sy).unwrap()));
    }
}
