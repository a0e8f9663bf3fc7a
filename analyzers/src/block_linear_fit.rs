//! `block_linear_fit`: the best affine map of the block's own kind from its
//! input to its output (dense: the whole input vector; convolution: each
//! output position's channels from its input patch), by ridge least squares
//! accumulated over probe chunks in f64.
//!
//! The regression rows are gathered and their p × p and p × q moment
//! matrices accumulated with tensor operations on the device the model runs
//! on (matrix products in f64); only those small matrices come back to the
//! host for the Cholesky solve.

use crate::analyzer::{check_taps, Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
use crate::capture::{Chunk, ModelInfo};
use crate::linear_fit::{ridge_rss, BlockFits, Fit, Moments};

pub use crate::linear_fit::{MAX_ROWS, RIDGE};

pub struct BlockLinearFit;

const NAME: &str = "block_linear_fit";
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
        &["nonlinearity", "linearity_score", "linearity_score_residual", "n_rows", "n_features"]
    }
    fn needs(&self) -> Needs {
        Needs { taps: true, block_inputs: true, streams: true, ..Needs::default() }
    }
    fn start(&self, model: &ModelInfo) -> Box<dyn Accumulator> {
        let fits = model.taps.iter().map(|t| Fit::new(&t.block, t.units, model.n_probe)).collect();
        // A transformer's sublayers and blocks (x → x + f(LN(x))), fitted on
        // the residual stream as docs/metrics.md's "Sequence models" asks.
        let sublayers = BlockFits::new(model, |b| b.streams.is_some());
        Box::new(BlockAcc { model: model.clone(), fits, sublayers })
    }
}

struct BlockAcc {
    model: ModelInfo,
    fits: Vec<Fit>,
    sublayers: BlockFits,
}

impl Accumulator for BlockAcc {
    fn observe(&mut self, chunk: &Chunk<'_>) -> Result<(), AnalyzerError> {
        check_taps(NAME, &self.model, chunk)?;
        for ((t, tap), fit) in self.model.taps.iter().zip(chunk.taps).zip(&mut self.fits) {
            if t.input_units == 0 {
                continue;
            }
            let input =
                tap.input.ok_or_else(|| AnalyzerError::Shape { analyzer: NAME, message: "no block inputs were captured".into() })?;
            let dims = input.dims();
            if dims.first() != Some(&chunk.samples) || dims.iter().skip(1).product::<usize>() != t.input_units {
                return Err(AnalyzerError::Shape {
                    analyzer: NAME,
                    message: format!("tap {} block input: expected {} features per sample, got shape {dims:?}", t.index, t.input_units),
                });
            }
            fit.observe(&t.block, t.units, input, tap.a, chunk.first).map_err(AnalyzerError::compute(NAME))?;
        }
        if !self.sublayers.is_empty() {
            self.sublayers.observe(NAME, chunk)?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>, _extras: &Extras<'_>) -> Result<Finished, AnalyzerError> {
        let mut out = Vec::new();
        let mut notes = Vec::new();
        for (t, fit) in self.model.taps.iter().zip(&self.fits) {
            if t.input_units == 0 {
                notes.push(format!("tap {}: the layer feeding it is not known, so no block fit is written", t.index));
                continue;
            }
            let (p, n) = (fit.p, fit.rows);
            let Some(s) = fit.sums_if_overdetermined() else {
                let rows = if fit.exact { (self.model.n_probe * fit.positions) as f64 } else { n };
                notes.push(format!(
                    "tap {}: {} input features but only {rows} regression rows; an affine fit would be exact, so no rows are written",
                    t.index, p
                ));
                continue;
            };
            let Moments { g, c, tss, n } = fit.moments(s).map_err(AnalyzerError::compute(NAME))?;
            let l = t.index;
            out.push(MetricValue::layer(l, "n_rows", Some(n)));
            out.push(MetricValue::layer(l, "n_features", Some(p as f64)));
            if !(tss > 0.0) {
                out.push(MetricValue::layer(l, "nonlinearity", None));
                out.push(MetricValue::layer(l, "linearity_score", None));
                continue;
            }
            let rss = ridge_rss(&g, &c, tss).map_err(|e| AnalyzerError::Shape { analyzer: NAME, message: format!("tap {l}: {e}") })?;
            let nl = rss / tss;
            out.push(MetricValue::layer(l, "nonlinearity", Some(nl)));
            // With X̃, Ỹ the centred blocks divided by their Frobenius norms, the
            // relative ridge is scale-free, so ‖X̃A − Ỹ‖² = RSS / TSS exactly.
            out.push(MetricValue::layer(l, "linearity_score", Some(1.0 - nl)));
        }
        self.sublayers.finish(NAME, &mut out, &mut notes)?;
        Ok(Finished { values: out, notes })
    }
}
