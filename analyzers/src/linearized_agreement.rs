//! `linearized_agreement`: the functional test of each nonlinearity. The
//! driver runs the network with taps replaced by their per-unit affine
//! surrogates (`unit_linear_fit::surrogate`) — one tap, a shallow prefix,
//! or a deep suffix — and this module scores each variant against the
//! intact network on the probe.

use crate::analyzer::{Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
use crate::capture::ModelInfo;
use crate::info::mu;
pub use crate::inputs::{RowScores, VariantKind, VariantLogits};

pub struct LinearizedAgreement;

const NAME: &str = "linearized_agreement";
/// `linear_prefix_depth` is the deepest prefix with at least this agreement.
pub const PREFIX_THRESHOLD: f64 = 0.95;

/// Every variant this analyzer scores, for a model with `n_taps` taps.
pub fn variants(n_taps: usize) -> Vec<(VariantKind, usize)> {
    [VariantKind::Single, VariantKind::Prefix, VariantKind::Suffix].iter().flat_map(|&v| (0..n_taps).map(move |k| (v, k))).collect()
}

/// (agreement, delta_loss, μ in bits) of a variant against the base
/// network, over `classes` classes.
pub fn score(base: &RowScores, variant: &RowScores, labels: &[i64], classes: usize) -> (Option<f64>, Option<f64>, Option<f64>) {
    let n = labels.len();
    if n == 0 || base.len() != n || variant.len() != n {
        return (None, None, None);
    }
    let y: Vec<usize> = labels.iter().map(|&v| v as usize).collect();
    let (fb, fv) = (&base.argmax, &variant.argmax);
    let agree = fb.iter().zip(fv).filter(|(a, b)| a == b).count() as f64 / n as f64;
    let ce = |s: &RowScores| s.cross_entropy.iter().sum::<f64>() / n as f64;
    let dl = ce(variant) - ce(base);
    (Some(agree), Some(dl), mu(fb, fv, &y, classes).map(|r| r.mu))
}

impl Analyzer for LinearizedAgreement {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "agreement, Δloss and μ of the network with one tap / a shallow prefix / a deep suffix replaced by per-unit affine surrogates"
    }
    fn metrics(&self) -> &'static [&'static str] {
        &[
            "agreement",
            "delta_loss",
            "mu_bits",
            "prefix_agreement",
            "prefix_delta_loss",
            "prefix_mu_bits",
            "suffix_agreement",
            "suffix_delta_loss",
            "suffix_mu_bits",
            "linear_prefix_depth",
        ]
    }
    fn needs(&self) -> Needs {
        Needs { variants: true, ..Needs::default() }
    }
    fn start(&self, model: &ModelInfo) -> Box<dyn Accumulator> {
        Box::new(LinAcc { classes: model.num_classes })
    }
}

struct LinAcc {
    classes: usize,
}

fn metric_name(kind: VariantKind, what: &str) -> &'static str {
    match (kind.prefix(), what) {
        ("", "agreement") => "agreement",
        ("", "delta_loss") => "delta_loss",
        ("", _) => "mu_bits",
        ("prefix_", "agreement") => "prefix_agreement",
        ("prefix_", "delta_loss") => "prefix_delta_loss",
        ("prefix_", _) => "prefix_mu_bits",
        (_, "agreement") => "suffix_agreement",
        (_, "delta_loss") => "suffix_delta_loss",
        _ => "suffix_mu_bits",
    }
}

impl Accumulator for LinAcc {
    fn finish(self: Box<Self>, extras: &Extras<'_>) -> Result<Finished, AnalyzerError> {
        let v =
            extras.variants.ok_or(AnalyzerError::NotApplicable { analyzer: NAME, message: "no variant logits were supplied".into() })?;
        let labels = extras.labels;
        let n = labels.len();
        let k = self.classes;
        if v.base.len() != n || v.variants.iter().any(|(_, _, s)| s.len() != n) {
            return Err(AnalyzerError::Shape {
                analyzer: NAME,
                message: format!("row scores for {} samples (and variants) where the probe has {n} labels", v.base.len()),
            });
        }
        let mut out = Vec::new();
        let mut prefix_depth: i64 = -1;
        for (kind, tap, rows) in &v.variants {
            let (agree, dl, mu_bits) = score(&v.base, rows, labels, k);
            out.push(MetricValue::layer(*tap, metric_name(*kind, "agreement"), agree));
            out.push(MetricValue::layer(*tap, metric_name(*kind, "delta_loss"), dl));
            out.push(MetricValue::layer(*tap, metric_name(*kind, "mu_bits"), mu_bits));
            if *kind == VariantKind::Prefix && agree.is_some_and(|a| a >= PREFIX_THRESHOLD) {
                prefix_depth = prefix_depth.max(*tap as i64);
            }
        }
        out.push(MetricValue::model("linear_prefix_depth", Some(prefix_depth as f64)));
        Ok(Finished::values(out))
    }
}
