//! The ridge least-squares fits `block_linear_fit` and
//! `residual_linear_fit` share: running moments of a map from a block's
//! input X to its output Y (a tap's affine layer, a residual block, or a
//! transformer's sublayer on the residual stream), and the fits of the
//! residual blocks and sublayers a filter picks. Both analyzers import this
//! module; neither imports the other.

use crate::analyzer::{AnalyzerError, MetricValue};
use crate::capture::{BlockGeometry, Chunk, ModelInfo, ResidualBlockInfo};
use candle_core::{DType, Tensor};
use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

/// At most this many regression rows per tap: convolutional blocks use this
/// many (sample, position) pairs, the same positions at every checkpoint.
pub const MAX_ROWS: usize = 65_536;
/// Ridge λ = RIDGE · tr(G) / p (docs/metrics.md).
pub const RIDGE: f64 = 1e-6;

/// Running sums for one fitted map (a tap's block, or a residual block),
/// on the device, shifted by the first chunk's means so that the centring
/// at the end does not cancel catastrophically.
pub(crate) struct Fit {
    pub(crate) p: usize,
    pub(crate) q: usize,
    /// Positions used per sample (conv) — all of them when they fit MAX_ROWS.
    pub(crate) positions: usize,
    /// The fit is known to be exact before any data is seen (no more
    /// regression rows than features), so nothing is accumulated.
    pub(crate) exact: bool,
    pub(crate) rows: f64,
    sums: Option<Sums>,
}

/// Centred moments of a fit: G = X̃ᵀX̃ (p × p), C = X̃ᵀỸ (p × q), the total
/// sum of squares of Y and the number of rows.
pub(crate) struct Moments {
    pub(crate) g: Mat<f64>,
    pub(crate) c: Mat<f64>,
    pub(crate) tss: f64,
    pub(crate) n: f64,
}

pub(crate) struct Sums {
    shift_x: Tensor,
    shift_y: Tensor,
    sx: Tensor,
    sy: Tensor,
    syy: Tensor,
    sxx: Tensor,
    sxy: Tensor,
}

impl Fit {
    /// A fit of the map `block` onto `units` output values per sample.
    pub(crate) fn new(block: &BlockGeometry, units: usize, n_probe: usize) -> Fit {
        let (p, q, positions) = match *block {
            BlockGeometry::Dense { features } => (features, units, 1),
            BlockGeometry::Conv { in_channels, kernel, out_channels, out_height, out_width, .. } => {
                let all = out_height * out_width;
                (in_channels * kernel * kernel, out_channels, all.min((MAX_ROWS / n_probe.max(1)).max(1)))
            }
            BlockGeometry::Tokens { positions, in_features, out_features } => {
                (in_features, out_features, positions.min((MAX_ROWS / n_probe.max(1)).max(1)))
            }
        };
        let exact = n_probe > 0 && n_probe * positions <= p;
        Fit { p, q, positions, exact, rows: 0.0, sums: None }
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

/// The regression rows of one chunk on the tensors' device: X (rows × p)
/// and Y (rows × q), f64. A convolutional block's rows are its input
/// patches (channel, kernel row, kernel column order, zero padding) at the
/// chosen output positions, gathered from the padded input in one
/// `index_select`; Y is the output channels at those positions.
fn design(
    block: &BlockGeometry,
    units: usize,
    input: &Tensor,
    out: &Tensor,
    first: usize,
    positions: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let b = input.dim(0)?;
    match *block {
        BlockGeometry::Dense { features } => {
            Ok((input.reshape((b, features))?.to_dtype(DType::F64)?, out.reshape((b, units))?.to_dtype(DType::F64)?))
        }
        BlockGeometry::Conv { in_channels, height, width, kernel, stride, padding, out_channels, out_height, out_width } => {
            let (hp, wp) = (height + 2 * padding, width + 2 * padding);
            let padded =
                input.reshape((b, in_channels, height, width))?.pad_with_zeros(2, padding, padding)?.pad_with_zeros(3, padding, padding)?;
            let p = in_channels * kernel * kernel;
            let l = out_height * out_width;
            let mut ix: Vec<u32> = Vec::with_capacity(b * positions * p);
            let mut iy: Vec<u32> = Vec::with_capacity(b * positions * out_channels);
            for i in 0..b {
                for pos in positions_for(first + i, positions, l) {
                    let (oi, oj) = (pos / out_width, pos % out_width);
                    for c in 0..in_channels {
                        for di in 0..kernel {
                            for dj in 0..kernel {
                                ix.push((((i * in_channels + c) * hp + oi * stride + di) * wp + oj * stride + dj) as u32);
                            }
                        }
                    }
                    for c in 0..out_channels {
                        iy.push(((i * out_channels + c) * l + pos) as u32);
                    }
                }
            }
            let rows = b * positions;
            let dev = input.device();
            let x = padded.flatten_all()?.index_select(&Tensor::from_vec(ix, rows * p, dev)?, 0)?.reshape((rows, p))?;
            let y = out.flatten_all()?.index_select(&Tensor::from_vec(iy, rows * out_channels, dev)?, 0)?.reshape((rows, out_channels))?;
            Ok((x.to_dtype(DType::F64)?, y.to_dtype(DType::F64)?))
        }
        BlockGeometry::Tokens { positions: t, in_features, out_features } => {
            // Rows (sample i, position) of the [b·t, features] views.
            let mut rows: Vec<u32> = Vec::with_capacity(b * positions);
            for i in 0..b {
                rows.extend(positions_for(first + i, positions, t).into_iter().map(|pos| (i * t + pos) as u32));
            }
            let idx = Tensor::from_vec(rows, b * positions, input.device())?;
            let x = input.reshape((b * t, in_features))?.index_select(&idx, 0)?;
            let y = out.reshape((b * t, out_features))?.index_select(&idx, 0)?;
            Ok((x.to_dtype(DType::F64)?, y.to_dtype(DType::F64)?))
        }
    }
}

impl Fit {
    pub(crate) fn observe(
        &mut self,
        block: &BlockGeometry,
        units: usize,
        input: &Tensor,
        out: &Tensor,
        first: usize,
    ) -> candle_core::Result<()> {
        if self.exact {
            return Ok(());
        }
        let (x, y) = design(block, units, input, out, first, self.positions)?;
        let rows = x.dim(0)?;
        if rows == 0 {
            return Ok(());
        }
        if self.sums.is_none() {
            let (sx0, sy0) = (x.mean_keepdim(0)?, y.mean_keepdim(0)?);
            let dev = x.device();
            self.sums = Some(Sums {
                sx: Tensor::zeros(self.p, DType::F64, dev)?,
                sy: Tensor::zeros(self.q, DType::F64, dev)?,
                syy: Tensor::zeros(self.q, DType::F64, dev)?,
                sxx: Tensor::zeros((self.p, self.p), DType::F64, dev)?,
                sxy: Tensor::zeros((self.p, self.q), DType::F64, dev)?,
                shift_x: sx0,
                shift_y: sy0,
            });
        }
        let s = self.sums.as_mut().expect("set above");
        let xm = x.broadcast_sub(&s.shift_x)?;
        let ym = y.broadcast_sub(&s.shift_y)?;
        let xt = xm.t()?;
        s.sxx = (&s.sxx + xt.matmul(&xm)?)?;
        s.sxy = (&s.sxy + xt.matmul(&ym)?)?;
        s.sx = (&s.sx + xm.sum(0)?)?;
        s.sy = (&s.sy + ym.sum(0)?)?;
        s.syy = (&s.syy + ym.sqr()?.sum(0)?)?;
        self.rows += rows as f64;
        Ok(())
    }
}

fn host_mat(t: &Tensor) -> candle_core::Result<Mat<f64>> {
    let (r, c) = t.dims2()?;
    let v: Vec<f64> = t.flatten_all()?.to_vec1()?;
    Ok(Mat::from_fn(r, c, |i, j| v[i * c + j]))
}

impl Fit {
    /// The centred moments, from the sums on the device (small p × p and
    /// p × q matrices come to the host).
    pub(crate) fn moments(&self, s: &Sums) -> candle_core::Result<Moments> {
        let (p, q, n) = (self.p, self.q, self.rows);
        let v = |t: &Tensor| t.to_vec1::<f64>();
        let (sxx, sxy, sx, sy, syy) = (host_mat(&s.sxx)?, host_mat(&s.sxy)?, v(&s.sx)?, v(&s.sy)?, v(&s.syy)?);
        // Centred moments: G = Σ x̃x̃ᵀ − n m mᵀ, etc. (x̃ shifted values).
        let mx: Vec<f64> = sx.iter().map(|v| v / n).collect();
        let my: Vec<f64> = sy.iter().map(|v| v / n).collect();
        let g = Mat::<f64>::from_fn(p, p, |i, j| sxx[(i, j)] - n * mx[i] * mx[j]);
        let c = Mat::<f64>::from_fn(p, q, |i, j| sxy[(i, j)] - n * mx[i] * my[j]);
        let tss: f64 = (0..q).map(|j| syy[j] - n * my[j] * my[j]).sum();
        Ok(Moments { g, c, tss, n })
    }

    /// The sums, once enough rows were seen that a fit is not exact.
    pub(crate) fn sums_if_overdetermined(&self) -> Option<&Sums> {
        self.sums.as_ref().filter(|_| self.rows > self.p as f64)
    }
}

/// The residual sum of squares of the ridge solution (λ = RIDGE·tr(G)/p).
pub(crate) fn ridge_rss(g: &Mat<f64>, c: &Mat<f64>, tss: f64) -> Result<f64, String> {
    let (p, q) = (c.nrows(), c.ncols());
    let trace: f64 = (0..p).map(|i| g[(i, i)]).sum();
    if !(trace > 0.0) {
        return Ok(tss);
    }
    let lambda = RIDGE * trace / p as f64;
    let m = Mat::<f64>::from_fn(p, p, |i, j| g[(i, j)] + if i == j { lambda } else { 0.0 });
    let llt = m.llt(Side::Lower).map_err(|e| format!("Cholesky failed ({e:?})"))?;
    let b = llt.solve(c);
    // RSS = tss − 2 tr(BᵀC) + tr(BᵀGB), exact for the ridge solution B.
    let gb = g * &b;
    let (mut btc, mut btgb) = (0.0, 0.0);
    for j in 0..q {
        for i in 0..p {
            btc += b[(i, j)] * c[(i, j)];
            btgb += b[(i, j)] * gb[(i, j)];
        }
    }
    Ok((tss - 2.0 * btc + btgb).clamp(0.0, tss))
}

fn units(g: &BlockGeometry) -> usize {
    match *g {
        BlockGeometry::Dense { features } => features,
        BlockGeometry::Conv { out_channels, out_height, out_width, .. } => out_channels * out_height * out_width,
        BlockGeometry::Tokens { positions, out_features, .. } => positions * out_features,
    }
}

/// Fits of the residual blocks (or transformer sublayers) a filter picks,
/// from block input (or residual stream) X to block output Y.
pub(crate) struct BlockFits {
    /// (index into `ModelInfo::residual_blocks`, the block, its fit)
    fits: Vec<(usize, ResidualBlockInfo, Fit)>,
}

impl BlockFits {
    pub(crate) fn new(model: &ModelInfo, pick: impl Fn(&ResidualBlockInfo) -> bool) -> Self {
        let fits = model
            .residual_blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| pick(b))
            .map(|(i, b)| (i, b.clone(), Fit::new(&b.block, units(&b.block), model.n_probe)))
            .collect();
        BlockFits { fits }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.fits.is_empty()
    }

    pub(crate) fn observe(&mut self, analyzer: &'static str, chunk: &Chunk<'_>) -> Result<(), AnalyzerError> {
        for (_, b, fit) in &mut self.fits {
            let (input, out) = match b.streams {
                Some((from, to)) => match (chunk.streams.get(from), chunk.streams.get(to)) {
                    (Some(x), Some(y)) => (x, y),
                    _ => {
                        return Err(AnalyzerError::Shape {
                            analyzer,
                            message: format!(
                                "{}: residual streams {from} and {to} were not captured ({} streams)",
                                b.name,
                                chunk.streams.len()
                            ),
                        })
                    }
                },
                None => (
                    chunk.taps[b.first_tap]
                        .input
                        .ok_or_else(|| AnalyzerError::Shape { analyzer, message: "no block inputs were captured".into() })?,
                    chunk.taps[b.last_tap].a,
                ),
            };
            let in_units = b.block.input_units();
            let dims = input.dims();
            if dims.iter().skip(1).product::<usize>() != in_units {
                return Err(AnalyzerError::Shape {
                    analyzer,
                    message: format!("block {}: expected {in_units} input values per sample, got shape {dims:?}", b.name),
                });
            }
            fit.observe(&b.block, units(&b.block), input, out, chunk.first).map_err(AnalyzerError::compute(analyzer))?;
        }
        Ok(())
    }

    pub(crate) fn finish(&self, analyzer: &'static str, out: &mut Vec<MetricValue>, notes: &mut Vec<String>) -> Result<(), AnalyzerError> {
        for (i, b, fit) in &self.fits {
            let Some(s) = fit.sums_if_overdetermined() else {
                notes.push(format!(
                    "block {}: {} input features but too few regression rows; an affine fit would be exact, so no rows are written",
                    b.name, fit.p
                ));
                continue;
            };
            let Moments { g, c, tss, n } = fit.moments(s).map_err(AnalyzerError::compute(analyzer))?;
            let row = |metric, value| MetricValue::residual_block(*i, b.last_tap, metric, value);
            out.push(row("n_rows", Some(n)));
            out.push(row("n_features", Some(fit.p as f64)));
            if !(tss > 0.0) {
                for m in ["nonlinearity", "linearity_score", "linearity_score_residual"] {
                    out.push(row(m, None));
                }
                continue;
            }
            let rss = ridge_rss(&g, &c, tss).map_err(|e| AnalyzerError::Shape { analyzer, message: format!("block {}: {e}", b.name) })?;
            out.push(row("nonlinearity", Some(rss / tss)));
            out.push(row("linearity_score", Some(1.0 - rss / tss)));
            let residual = if b.identity_shortcut { residual_score(&b.block, &g, &c, tss, rss) } else { None };
            out.push(row("linearity_score_residual", residual));
        }
        Ok(())
    }
}

/// 1 − RSS_Ỹ / ‖Ỹ − X̃_c‖², with X̃_c the input value at each output position
/// (the patch centre of each channel), from the centred moments.
fn residual_score(block: &BlockGeometry, g: &faer::Mat<f64>, c: &faer::Mat<f64>, tss: f64, rss: f64) -> Option<f64> {
    // The design column holding channel ch's value at the output position.
    let centre = |ch: usize| -> usize {
        match *block {
            BlockGeometry::Dense { .. } | BlockGeometry::Tokens { .. } => ch,
            BlockGeometry::Conv { kernel, padding, .. } => (ch * kernel + padding) * kernel + padding,
        }
    };
    let q = c.ncols();
    let (mut xx, mut xy) = (0.0, 0.0);
    for ch in 0..q {
        let k = centre(ch);
        xx += g[(k, k)];
        xy += c[(k, ch)];
    }
    if !(xx > 0.0) {
        return None;
    }
    let t2 = 2.0 - 2.0 * xy / (xx * tss).sqrt();
    // T = 0 (the block is the identity on this data): the score is undefined.
    (t2 > 1e-12).then(|| 1.0 - (rss / tss) / t2)
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
