//! `residual_linear_fit`: per residual block, the best affine map from the
//! block's input X to its output Y (after the addition and its
//! nonlinearity), fitted as a convolution whose kernel is the block's
//! receptive field and whose stride is the block's, by the same ridge least
//! squares as `block_linear_fit` (positions subsampled the same way).
//!
//! `linearity_score_residual` is the score on the residual-free target
//! Y − X (Razzhigaev et al., 2024), defined where the shortcut is the
//! identity. The literal definition (docs/metrics.md) writes the target as Ỹ − X̃ with X̃, Ỹ each centred
//! and divided by its Frobenius norm; taken literally, ‖X̃A − (Ỹ − X̃)‖²
//! equals ‖X̃A' − Ỹ‖² (X̃ is in the span of the design), so the number would
//! repeat `linearity_score`. We normalise the target as the score
//! normalises any target: T = Ỹ − X̃_c, where X̃_c is the input at each
//! output position (the patch centre), and the score is
//! 1 − RSS_Ỹ / ‖T‖²_F, since the best fit of T leaves the residual of the
//! best fit of Ỹ. ‖T‖² = 2 − 2⟨Ỹ, X̃_c⟩, both read off the moments already
//! accumulated (the centre columns of X's patches). A block that passes
//! its input through unchanged has T = 0: its residual score is null.

use crate::analyzer::{check_taps, Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
use crate::block_linear_fit::{ridge_rss, Fit, Moments};
use crate::capture::{BlockGeometry, Chunk, ModelInfo, ResidualBlockInfo};

pub struct ResidualLinearFit;

const NAME: &str = "residual_linear_fit";

impl Analyzer for ResidualLinearFit {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "per residual block: ridge least-squares conv map (receptive-field kernel) from block input to output, and on output − input"
    }
    fn metrics(&self) -> &'static [&'static str] {
        &["nonlinearity", "linearity_score", "linearity_score_residual", "n_rows", "n_features"]
    }
    fn needs(&self) -> Needs {
        Needs { taps: true, block_inputs: true, ..Needs::default() }
    }
    fn start(&self, model: &ModelInfo) -> Box<dyn Accumulator> {
        // A transformer's sublayers are `block_linear_fit`'s (docs/metrics.md).
        Box::new(ResidualAcc { model: model.clone(), fits: BlockFits::new(model, |b| b.streams.is_none()) })
    }
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

struct ResidualAcc {
    model: ModelInfo,
    fits: BlockFits,
}

impl Accumulator for ResidualAcc {
    fn observe(&mut self, chunk: &Chunk<'_>) -> Result<(), AnalyzerError> {
        check_taps(NAME, &self.model, chunk)?;
        self.fits.observe(NAME, chunk)
    }

    fn finish(self: Box<Self>, _extras: &Extras<'_>) -> Result<Finished, AnalyzerError> {
        let (mut values, mut notes) = (Vec::new(), Vec::new());
        self.fits.finish(NAME, &mut values, &mut notes)?;
        Ok(Finished { values, notes })
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
