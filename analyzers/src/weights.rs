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

/// Largest singular value. The SVD runs on one thread: faer's parallel
/// SVD splits its work by the thread count, which changed the last bits of
/// the result between 1 and 2 threads (measured 4e-15 relative), and tables
/// are meant to be identical whatever the thread count.
pub fn spectral_norm(w: &LayerWeights) -> f64 {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::svd::{self, ComputeSvdVectors};
    let m = MatRef::from_row_major_slice(&w.data, w.rows, w.cols);
    let m64 = faer::Mat::<f64>::from_fn(w.rows, w.cols, |i, j| m[(i, j)] as f64);
    let mut s = faer::diag::Diag::<f64>::zeros(w.rows.min(w.cols));
    let par = faer::Par::Seq;
    let scratch = svd::svd_scratch::<f64>(w.rows, w.cols, ComputeSvdVectors::No, ComputeSvdVectors::No, par, Default::default());
    let mut mem = MemBuffer::new(scratch);
    match svd::svd(m64.as_ref(), s.as_mut(), None, None, par, MemStack::new(&mut mem), Default::default()) {
        Ok(()) => s.column_vector().iter().copied().fold(0.0, f64::max),
        Err(_) => 0.0,
    }
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
