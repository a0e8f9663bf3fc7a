//! `unit_linear_fit`: how well each unit's nonlinearity is replaced by its
//! best affine surrogate α z + β on the probe.

use crate::analyzer::{Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
use crate::capture::ModelInfo;
use crate::stats::UnitMoments;

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
        Needs { moments: true, ..Needs::default() }
    }
    fn start(&self, model: &ModelInfo) -> Box<dyn Accumulator> {
        Box::new(FitAcc { model: model.clone() })
    }
}

struct FitAcc {
    model: ModelInfo,
}

/// The per-tap moments the driver computed, checked against the model.
pub(crate) fn moments<'a>(analyzer: &'static str, model: &ModelInfo, extras: &Extras<'a>) -> Result<&'a [UnitMoments], AnalyzerError> {
    let m = extras.moments.ok_or(AnalyzerError::NotApplicable { analyzer, message: "no unit moments were supplied".into() })?;
    if m.len() != model.taps.len() || m.iter().zip(&model.taps).any(|(m, t)| m.cols() != t.units) {
        return Err(AnalyzerError::Shape {
            analyzer,
            message: format!("moments for {} taps do not match the model's {}", m.len(), model.taps.len()),
        });
    }
    Ok(m)
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
pub fn surrogate(m: &UnitMoments) -> UnitSurrogate {
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
    fn finish(self: Box<Self>, extras: &Extras<'_>) -> Result<Finished, AnalyzerError> {
        let mut out = Vec::new();
        for (info, m) in self.model.taps.iter().zip(moments(NAME, &self.model, extras)?) {
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
