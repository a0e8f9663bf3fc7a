//! Centred Gram matrices of a tap's representation over the probe, and what
//! is computed from them: linear CKA (Kornblith et al., 2019) and the
//! effective rank (Roy & Vetterli, 2007).

use faer::Mat;

/// H K H for K = A Aᵀ, A the n × features post-activations; f64, n × n.
#[derive(Debug, Clone)]
pub struct Gram {
    pub n: usize,
    pub k: Mat<f64>,
}

impl Gram {
    /// From a row-major n × f matrix of f32 values. Accumulated in f64 over
    /// blocks of features (so memory stays n × block, not n × f in f64):
    /// an f32 product would put noise eigenvalues at ~1e-7 of the largest,
    /// which the effective rank counts as real directions.
    pub fn from_rows(n: usize, f: usize, data: &[f32]) -> Gram {
        assert_eq!(n * f, data.len(), "gram input size");
        const BLOCK: usize = 2048;
        let mut k = Mat::<f64>::zeros(n, n);
        let mut start = 0;
        while start < f {
            let end = (start + BLOCK).min(f);
            let blk = Mat::<f64>::from_fn(n, end - start, |i, j| data[i * f + start + j] as f64);
            k += &blk * blk.transpose();
            start = end;
        }
        Gram { n, k: center(k) }
    }

    /// ⟨self, other⟩_F
    pub fn dot(&self, other: &Gram) -> f64 {
        let mut s = 0.0;
        for j in 0..self.n {
            for i in 0..self.n {
                s += self.k[(i, j)] * other.k[(i, j)];
            }
        }
        s
    }
}

/// H K H with H = I − 11ᵀ/n.
pub fn center(mut k: Mat<f64>) -> Mat<f64> {
    let n = k.nrows();
    let nf = n as f64;
    let row_means: Vec<f64> = (0..n).map(|i| (0..n).map(|j| k[(i, j)]).sum::<f64>() / nf).collect();
    let total = row_means.iter().sum::<f64>() / nf;
    for j in 0..n {
        for i in 0..n {
            // K symmetric: column means equal row means.
            k[(i, j)] += total - row_means[i] - row_means[j];
        }
    }
    k
}

/// Linear CKA from two centred Grams; None when either representation is
/// constant on the probe.
pub fn cka(x: &Gram, y: &Gram) -> Option<f64> {
    let (xy, xx, yy) = (x.dot(y), x.dot(x), y.dot(y));
    let denom = (xx * yy).sqrt();
    (denom > 0.0 && denom.is_finite()).then(|| xy / denom)
}

/// exp(entropy) of the normalised singular values of the centred
/// representation, whose squares are the eigenvalues of the centred Gram.
/// Singular values below 1e-12 × the largest count as zero.
pub fn effective_rank(g: &Gram) -> Option<f64> {
    let eig = g.k.self_adjoint_eigenvalues(faer::Side::Lower).ok()?;
    let s: Vec<f64> = eig.iter().map(|&l| l.max(0.0).sqrt()).collect();
    let max = s.iter().cloned().fold(0.0, f64::max);
    if max <= 0.0 {
        return None;
    }
    let kept: Vec<f64> = s.into_iter().filter(|&v| v > 1e-12 * max).collect();
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
