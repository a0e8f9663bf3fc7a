//! `block_linear_fit`: the best affine map of the block's own kind from its
//! input to its output (dense: the whole input vector; convolution: each
//! output position's channels from its input patch), by ridge least squares
//! accumulated over probe chunks in f64.

use crate::analyzer::{check_taps, Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
use crate::capture::{BlockGeometry, Chunk, Matrix, ModelInfo, TapInfo};
use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

pub struct BlockLinearFit;

const NAME: &str = "block_linear_fit";
/// At most this many regression rows per tap: convolutional blocks use this
/// many (sample, position) pairs, the same positions at every checkpoint.
pub const MAX_ROWS: usize = 65_536;
/// Ridge λ = RIDGE · tr(G) / p (METRICS.md).
pub const RIDGE: f64 = 1e-6;

impl Analyzer for BlockLinearFit {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "ridge least-squares affine map of the block's kind (dense or conv patch) from block input to output"
    }
    fn metrics(&self) -> &'static [&'static str] {
        &["nonlinearity", "linearity_score", "n_rows", "n_features"]
    }
    fn needs(&self) -> Needs {
        Needs { taps: true, block_inputs: true, ..Needs::default() }
    }
    fn start(&self, model: &ModelInfo) -> Box<dyn Accumulator> {
        let fits = model.taps.iter().map(|t| Fit::new(t, model.n_probe)).collect();
        Box::new(BlockAcc { model: model.clone(), fits, seen: 0 })
    }
}

struct BlockAcc {
    model: ModelInfo,
    fits: Vec<Fit>,
    /// Probe samples seen so far: the global index of the next chunk's first.
    seen: usize,
}

/// Running sums for one tap, shifted by the first chunk's means so that the
/// centring at the end does not cancel catastrophically.
struct Fit {
    p: usize,
    q: usize,
    /// Positions used per sample (conv) — all of them when they fit MAX_ROWS.
    positions: usize,
    rows: f64,
    shift_x: Option<Vec<f64>>,
    shift_y: Vec<f64>,
    sx: Vec<f64>,
    sy: Vec<f64>,
    sxx: Mat<f64>,
    sxy: Mat<f64>,
    syy: Vec<f64>,
}

impl Fit {
    fn new(t: &TapInfo, n_probe: usize) -> Fit {
        let (p, q, positions) = match t.block {
            BlockGeometry::Dense { features } => (features, t.units, 1),
            BlockGeometry::Conv { in_channels, kernel, out_channels, out_height, out_width, .. } => {
                let all = out_height * out_width;
                (in_channels * kernel * kernel, out_channels, all.min((MAX_ROWS / n_probe.max(1)).max(1)))
            }
        };
        Fit {
            p,
            q,
            positions,
            rows: 0.0,
            shift_x: None,
            shift_y: vec![0.0; q],
            sx: vec![0.0; p],
            sy: vec![0.0; q],
            sxx: Mat::zeros(p, p),
            sxy: Mat::zeros(p, q),
            syy: vec![0.0; q],
        }
    }
}

/// Deterministic choice of `m` of `total` positions for probe sample `g`,
/// identical at every checkpoint (a seeded partial Fisher–Yates shuffle).
fn positions_for(g: usize, m: usize, total: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..total).collect();
    if m >= total {
        return idx;
    }
    let mut state = (g as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for i in 0..m {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = i + (state % (total - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(m);
    idx
}

/// The regression rows of one chunk: (X rows × p, Y rows × q), row-major f64.
fn design(t: &TapInfo, input: Matrix<'_>, out: Matrix<'_>, first: usize, positions: usize, p: usize, q: usize) -> (Vec<f64>, Vec<f64>) {
    match t.block {
        BlockGeometry::Dense { .. } => (input.data.iter().map(|&v| v as f64).collect(), out.data.iter().map(|&v| v as f64).collect()),
        BlockGeometry::Conv { in_channels, height, width, kernel, stride, padding, out_channels, out_height, out_width } => {
            let mut x = Vec::with_capacity(input.rows * positions * p);
            let mut y = Vec::with_capacity(input.rows * positions * q);
            for i in 0..input.rows {
                let (xin, yout) = (input.row(i), out.row(i));
                for pos in positions_for(first + i, positions, out_height * out_width) {
                    let (oi, oj) = (pos / out_width, pos % out_width);
                    for c in 0..in_channels {
                        for di in 0..kernel {
                            for dj in 0..kernel {
                                let (ii, jj) =
                                    ((oi * stride + di) as isize - padding as isize, (oj * stride + dj) as isize - padding as isize);
                                let inside = ii >= 0 && jj >= 0 && (ii as usize) < height && (jj as usize) < width;
                                x.push(if inside { xin[(c * height + ii as usize) * width + jj as usize] as f64 } else { 0.0 });
                            }
                        }
                    }
                    for c in 0..out_channels {
                        y.push(yout[(c * out_height + oi) * out_width + oj] as f64);
                    }
                }
            }
            (x, y)
        }
    }
}

impl Accumulator for BlockAcc {
    fn observe(&mut self, chunk: &Chunk<'_>) -> Result<(), AnalyzerError> {
        check_taps(NAME, &self.model, chunk)?;
        for ((t, tap), fit) in self.model.taps.iter().zip(chunk.taps).zip(&mut self.fits) {
            if tap.input.cols != t.input_units || tap.input.rows != chunk.labels.len() {
                return Err(AnalyzerError::Shape {
                    analyzer: NAME,
                    message: format!("tap {} block input: expected {} features, got {}", t.index, t.input_units, tap.input.cols),
                });
            }
            let (x, y) = design(t, tap.input, tap.a, self.seen, fit.positions, fit.p, fit.q);
            let rows = x.len() / fit.p.max(1);
            if rows == 0 {
                continue;
            }
            let (p, q) = (fit.p, fit.q);
            if fit.shift_x.is_none() {
                let mean =
                    |v: &[f64], w: usize| (0..w).map(|j| (0..rows).map(|r| v[r * w + j]).sum::<f64>() / rows as f64).collect::<Vec<f64>>();
                fit.shift_x = Some(mean(&x, p));
                fit.shift_y = mean(&y, q);
            }
            let sx0 = fit.shift_x.as_ref().expect("set above");
            let xm = Mat::<f64>::from_fn(rows, p, |r, j| x[r * p + j] - sx0[j]);
            let ym = Mat::<f64>::from_fn(rows, q, |r, j| y[r * q + j] - fit.shift_y[j]);
            fit.sxx += xm.transpose() * &xm;
            fit.sxy += xm.transpose() * &ym;
            for r in 0..rows {
                for j in 0..p {
                    fit.sx[j] += xm[(r, j)];
                }
                for j in 0..q {
                    fit.sy[j] += ym[(r, j)];
                    fit.syy[j] += ym[(r, j)] * ym[(r, j)];
                }
            }
            fit.rows += rows as f64;
        }
        self.seen += chunk.labels.len();
        Ok(())
    }

    fn finish(self: Box<Self>, _extras: &Extras<'_>) -> Result<Finished, AnalyzerError> {
        let mut out = Vec::new();
        let mut notes = Vec::new();
        for (t, fit) in self.model.taps.iter().zip(&self.fits) {
            let (p, q, n) = (fit.p, fit.q, fit.rows);
            if n <= p as f64 {
                notes.push(format!(
                    "tap {}: {} input features but only {n} regression rows; an affine fit would be exact, so no rows are written",
                    t.index, p
                ));
                continue;
            }
            // Centred moments: G = Σ x̃x̃ᵀ − n m mᵀ, etc. (x̃ shifted values).
            let mx: Vec<f64> = fit.sx.iter().map(|v| v / n).collect();
            let my: Vec<f64> = fit.sy.iter().map(|v| v / n).collect();
            let g = Mat::<f64>::from_fn(p, p, |i, j| fit.sxx[(i, j)] - n * mx[i] * mx[j]);
            let c = Mat::<f64>::from_fn(p, q, |i, j| fit.sxy[(i, j)] - n * mx[i] * my[j]);
            let tss: f64 = (0..q).map(|j| fit.syy[j] - n * my[j] * my[j]).sum();
            let l = t.index;
            out.push(MetricValue::layer(l, "n_rows", Some(n)));
            out.push(MetricValue::layer(l, "n_features", Some(p as f64)));
            if !(tss > 0.0) {
                out.push(MetricValue::layer(l, "nonlinearity", None));
                out.push(MetricValue::layer(l, "linearity_score", None));
                continue;
            }
            let trace: f64 = (0..p).map(|i| g[(i, i)]).sum();
            let rss = if trace > 0.0 {
                let lambda = RIDGE * trace / p as f64;
                let m = Mat::<f64>::from_fn(p, p, |i, j| g[(i, j)] + if i == j { lambda } else { 0.0 });
                let llt = m
                    .llt(Side::Lower)
                    .map_err(|e| AnalyzerError::Shape { analyzer: NAME, message: format!("tap {l}: Cholesky failed ({e:?})") })?;
                let b = llt.solve(&c);
                // RSS = tss − 2 tr(BᵀC) + tr(BᵀGB), exact for the ridge solution B.
                let gb = &g * &b;
                let (mut btc, mut btgb) = (0.0, 0.0);
                for j in 0..q {
                    for i in 0..p {
                        btc += b[(i, j)] * c[(i, j)];
                        btgb += b[(i, j)] * gb[(i, j)];
                    }
                }
                (tss - 2.0 * btc + btgb).clamp(0.0, tss)
            } else {
                tss
            };
            let nl = rss / tss;
            out.push(MetricValue::layer(l, "nonlinearity", Some(nl)));
            // With X̃, Ỹ the centred blocks divided by their Frobenius norms, the
            // relative ridge is scale-free, so ‖X̃A − Ỹ‖² = RSS / TSS exactly.
            out.push(MetricValue::layer(l, "linearity_score", Some(1.0 - nl)));
        }
        Ok(Finished { values: out, notes })
    }
}

#[cfg(test)]
mod tests {
    use super::positions_for;

    #[test]
    fn positions_are_distinct_and_stable() {
        let a = positions_for(17, 10, 64);
        assert_eq!(a, positions_for(17, 10, 64));
        let mut s = a.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 10);
        assert_ne!(a, positions_for(18, 10, 64));
        assert_eq!(positions_for(3, 100, 9), (0..9).collect::<Vec<_>>());
    }
}
