//! `weights`: norms of the affine layer feeding each tap, and how far it has
//! moved from initialisation.

use crate::analyzer::{Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
use crate::capture::{LayerWeights, ModelInfo};
use faer::MatRef;

pub struct Weights;

const NAME: &str = "weights";

impl Analyzer for Weights {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "Frobenius and spectral norm, stable rank, relative distance from step 0 of each tap's affine layer"
    }
    fn metrics(&self) -> &'static [&'static str] {
        &["frobenius_norm", "spectral_norm", "stable_rank", "rel_dist_from_init"]
    }
    fn needs(&self) -> Needs {
        Needs { weights: true, ..Needs::default() }
    }
    fn start(&self, _model: &ModelInfo) -> Box<dyn Accumulator> {
        Box::new(WeightsAcc)
    }
}

struct WeightsAcc;

/// Largest singular value.
pub fn spectral_norm(w: &LayerWeights) -> f64 {
    let m = MatRef::from_row_major_slice(&w.data, w.rows, w.cols);
    let m64 = faer::Mat::<f64>::from_fn(w.rows, w.cols, |i, j| m[(i, j)] as f64);
    m64.singular_values().ok().and_then(|s| s.first().copied()).unwrap_or(0.0)
}

pub fn frobenius(w: &LayerWeights) -> f64 {
    w.data.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt()
}

impl Accumulator for WeightsAcc {
    fn finish(self: Box<Self>, extras: &Extras<'_>) -> Result<Finished, AnalyzerError> {
        let Some(weights) = extras.weights else {
            return Err(AnalyzerError::NotApplicable { analyzer: NAME, message: "no weights were supplied".into() });
        };
        let mut out = Vec::new();
        for w in weights {
            let fro = frobenius(w);
            let spec = spectral_norm(w);
            let l = w.tap;
            out.push(MetricValue::layer(l, "frobenius_norm", Some(fro)));
            out.push(MetricValue::layer(l, "spectral_norm", Some(spec)));
            out.push(MetricValue::layer(l, "stable_rank", (spec > 0.0).then(|| fro * fro / (spec * spec))));
            let init = extras.init_weights.and_then(|iw| iw.iter().find(|x| x.tap == l && x.data.len() == w.data.len()));
            let rel = init.and_then(|w0| {
                let n0 = frobenius(w0);
                let d = w.data.iter().zip(&w0.data).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
                (n0 > 0.0).then(|| d / n0)
            });
            out.push(MetricValue::layer(l, "rel_dist_from_init", rel));
        }
        Ok(Finished::values(out))
    }
}
