//! `linearized_agreement`: the functional test of each nonlinearity. The
//! driver runs the network with taps replaced by their per-unit affine
//! surrogates (`unit_linear_fit::surrogate`) — one tap, a shallow prefix,
//! or a deep suffix — and this module scores each variant against the
//! intact network on the probe.

use crate::analyzer::{Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
use crate::capture::{Matrix, ModelInfo};
use crate::info::mu;
use crate::performance::{argmax, cross_entropy};

pub struct LinearizedAgreement;

const NAME: &str = "linearized_agreement";
/// `linear_prefix_depth` is the deepest prefix with at least this agreement.
pub const PREFIX_THRESHOLD: f64 = 0.95;

/// Which taps a variant replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariantKind {
    /// Only tap k.
    Single,
    /// Taps 0..=k.
    Prefix,
    /// Taps k..L-1.
    Suffix,
}

impl VariantKind {
    pub fn taps(self, k: usize, n_taps: usize) -> Vec<usize> {
        match self {
            VariantKind::Single => vec![k],
            VariantKind::Prefix => (0..=k).collect(),
            VariantKind::Suffix => (k..n_taps).collect(),
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            VariantKind::Single => "",
            VariantKind::Prefix => "prefix_",
            VariantKind::Suffix => "suffix_",
        }
    }
}

/// Every variant this analyzer scores, for a model with `n_taps` taps.
pub fn variants(n_taps: usize) -> Vec<(VariantKind, usize)> {
    [VariantKind::Single, VariantKind::Prefix, VariantKind::Suffix].iter().flat_map(|&v| (0..n_taps).map(move |k| (v, k))).collect()
}

/// Logits of the intact network and of each variant on the probe
/// (row-major, n × classes).
#[derive(Debug, Clone)]
pub struct VariantLogits {
    pub classes: usize,
    pub base: Vec<f32>,
    pub variants: Vec<(VariantKind, usize, Vec<f32>)>,
}

/// (agreement, delta_loss, μ in bits) of a variant against the base network.
pub fn score(base: Matrix<'_>, variant: Matrix<'_>, labels: &[i64]) -> (Option<f64>, Option<f64>, Option<f64>) {
    let n = labels.len();
    if n == 0 {
        return (None, None, None);
    }
    let k = base.cols;
    let y: Vec<usize> = labels.iter().map(|&v| v as usize).collect();
    let fb: Vec<usize> = (0..n).map(|i| argmax(base.row(i))).collect();
    let fv: Vec<usize> = (0..n).map(|i| argmax(variant.row(i))).collect();
    let agree = fb.iter().zip(&fv).filter(|(a, b)| a == b).count() as f64 / n as f64;
    let ce = |m: Matrix<'_>| (0..n).map(|i| cross_entropy(m.row(i), y[i])).sum::<f64>() / n as f64;
    let dl = ce(variant) - ce(base);
    (Some(agree), Some(dl), mu(&fb, &fv, &y, k).map(|r| r.mu))
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
        if v.base.len() != n * k {
            return Err(AnalyzerError::Shape {
                analyzer: NAME,
                message: format!("base logits hold {} values for {n} samples × {k} classes", v.base.len()),
            });
        }
        let base = Matrix::new(n, k, &v.base);
        let mut out = Vec::new();
        let mut prefix_depth: i64 = -1;
        for (kind, tap, logits) in &v.variants {
            let (agree, dl, mu_bits) = score(base, Matrix::new(n, k, logits), labels);
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
