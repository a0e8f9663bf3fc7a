//! `unit_linear_fit`: how well each unit's nonlinearity is replaced by its
//! best affine surrogate α z + β on the probe.

use crate::analyzer::{check_taps, Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
use crate::capture::{Chunk, ModelInfo};
use crate::stats::PairedMoments;

pub struct UnitLinearFit;

const NAME: &str = "unit_linear_fit";

impl Analyzer for UnitLinearFit {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "per-unit least-squares affine fit a ≈ αz + β; pooled residual share"
    }
    fn metrics(&self) -> &'static [&'static str] {
        &["nonlinearity", "mean_unit_r2", "n_units_varying", "n_units"]
    }
    fn needs(&self) -> Needs {
        Needs { taps: true, ..Needs::default() }
    }
    fn start(&self, model: &ModelInfo) -> Box<dyn Accumulator> {
        let moments = model.taps.iter().map(|t| PairedMoments::new(t.units)).collect();
        Box::new(FitAcc { model: model.clone(), moments })
    }
}

struct FitAcc {
    model: ModelInfo,
    moments: Vec<PairedMoments>,
}

/// The per-unit affine surrogate of one tap, as fitted on the probe. Later
/// analyzers (linearised agreement) reuse it.
#[derive(Debug, Clone)]
pub struct UnitSurrogate {
    pub alpha: Vec<f64>,
    pub beta: Vec<f64>,
}

/// α, β per unit from accumulated moments; a unit whose z is constant gets
/// α = 0 and β = its mean output.
pub fn surrogate(m: &PairedMoments) -> UnitSurrogate {
    let mut alpha = Vec::with_capacity(m.cols());
    let mut beta = Vec::with_capacity(m.cols());
    for j in 0..m.cols() {
        let a = if m.m2_x[j] > 0.0 { m.c_xy[j] / m.m2_x[j] } else { 0.0 };
        alpha.push(a);
        beta.push(m.mean_y[j] - a * m.mean_x[j]);
    }
    UnitSurrogate { alpha, beta }
}

impl Accumulator for FitAcc {
    fn observe(&mut self, chunk: &Chunk<'_>) -> Result<(), AnalyzerError> {
        check_taps(NAME, &self.model, chunk)?;
        for (m, tap) in self.moments.iter_mut().zip(chunk.taps) {
            m.observe(tap.z, tap.a);
        }
        Ok(())
    }

    fn finish(self: Box<Self>, _extras: &Extras<'_>) -> Result<Finished, AnalyzerError> {
        let mut out = Vec::new();
        for (info, m) in self.model.taps.iter().zip(&self.moments) {
            let (mut res, mut var, mut r2_sum, mut varying) = (0.0, 0.0, 0.0, 0usize);
            for j in 0..m.cols() {
                if !m.y_varies(j) {
                    continue;
                }
                let r = m.residual(j);
                res += r;
                var += m.m2_y[j];
                // A unit whose range is non-zero but whose f64 variance
                // underflows contributes nothing to the mean R².
                if m.m2_y[j] > 0.0 {
                    r2_sum += 1.0 - r / m.m2_y[j];
                }
                varying += 1;
            }
            let l = info.index;
            let some = varying > 0 && var > 0.0;
            out.push(MetricValue::layer(l, "nonlinearity", some.then(|| res / var)));
            out.push(MetricValue::layer(l, "mean_unit_r2", some.then(|| r2_sum / varying as f64)));
            out.push(MetricValue::layer(l, "n_units_varying", Some(varying as f64)));
            out.push(MetricValue::layer(l, "n_units", Some(m.cols() as f64)));
        }
        Ok(Finished::values(out))
    }
}
