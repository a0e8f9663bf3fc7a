//! What the driver computes for some analyzers beyond the captured chunks:
//! the linearised variants' row scores and the surrogates' predictions,
//! with the row math they share (argmax, cross-entropy). A leaf: the
//! `Analyzer` trait's `Extras` carry these types, and the analyzers that
//! read them import them from here.

use crate::capture::Matrix;
use rayon::prelude::*;

/// Index of the largest logit; the first one on ties (as numpy's argmax).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (k, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = k;
        }
    }
    best
}

/// −log softmax(row)[label], computed stably in f64.
pub fn cross_entropy(row: &[f32], label: usize) -> f64 {
    row_score(row, label).1
}

/// (argmax, −log softmax(row)[label]) of one row in two sweeps instead of
/// three: the largest logit found once serves both. The first index wins
/// ties (as numpy's argmax); a NaN row keeps index 0 and a NaN loss.
///
/// The exponentials of the f32 logits (less their maximum, so at most 1)
/// are taken in f32 and summed in f64: each term is then within 1e-7 of
/// its f64 value, and the sum and the log stay in f64. f64 `exp` had been
/// 8% of the linearised variants (3L + 1 rows of 50,000 logits per token).
pub fn row_score(row: &[f32], label: usize) -> (usize, f64) {
    let best = argmax(row);
    // The largest logit is row[best], unless row[0] is NaN (argmax then
    // stays at 0 while the maximum skips NaNs).
    let max = match row[best] {
        m if m.is_nan() => row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
        m => m,
    };
    let sum: f64 = row.iter().map(|&v| (v - max).exp() as f64).sum();
    (best, max as f64 + sum.ln() - row[label] as f64)
}

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
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            VariantKind::Single => "",
            VariantKind::Prefix => "prefix_",
            VariantKind::Suffix => "suffix_",
        }
    }
}

/// What scoring a network needs of its logits on the probe, per row: the
/// predicted class and the cross-entropy at the label. Kept instead of the
/// logits themselves: a language model's n × vocabulary floats, for the
/// intact network and 3L variants, do not fit in memory (Pythia-160M at a
/// 4,096-token probe: 824 MB per variant).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowScores {
    pub argmax: Vec<usize>,
    pub cross_entropy: Vec<f64>,
}

impl RowScores {
    /// Appends the rows of `logits` with their `labels`. Rows are scored in
    /// parallel (a language model's rows are 50,000 logits wide, and the
    /// linearised variants score 3L + 1 such matrices per chunk).
    pub fn extend(&mut self, logits: Matrix<'_>, labels: &[i64]) {
        let n = labels.len().min(logits.rows);
        let scores: Vec<(usize, f64)> = (0..n).into_par_iter().map(|i| row_score(logits.row(i), labels[i] as usize)).collect();
        for (best, ce) in scores {
            self.argmax.push(best);
            self.cross_entropy.push(ce);
        }
    }

    pub fn of(logits: Matrix<'_>, labels: &[i64]) -> RowScores {
        let mut s = RowScores::default();
        s.extend(logits, labels);
        s
    }

    pub fn len(&self) -> usize {
        self.argmax.len()
    }

    pub fn is_empty(&self) -> bool {
        self.argmax.is_empty()
    }
}

/// The intact network's and each variant's row scores on the probe.
#[derive(Debug, Clone)]
pub struct VariantLogits {
    pub classes: usize,
    pub base: RowScores,
    pub variants: Vec<(VariantKind, usize, RowScores)>,
}

/// Predictions of the network (f) and one surrogate (s) with labels (y).
#[derive(Debug, Clone)]
pub struct SurrogatePredictions {
    /// The `surrogate` column: `linear`, `<run_id>@<step>`, …
    pub name: String,
    /// Where the samples came from: `test` (the held-out split) or `probe`.
    pub split: String,
    pub f: Vec<usize>,
    pub s: Vec<usize>,
    pub y: Vec<usize>,
    /// (accuracy, samples) of the surrogate on the data it was trained on,
    /// when the driver knows it (the `linear` surrogate).
    pub train_accuracy: Option<(f64, u64)>,
    /// (accuracy, samples) of the surrogate on the probe, when known.
    pub probe_accuracy: Option<(f64, u64)>,
}
