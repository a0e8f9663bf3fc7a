//! The one trait every metric implements, and what it produces.

use crate::capture::{Chunk, LayerWeights, ModelInfo};
use crate::gram::Gram;
use crate::inputs::{SurrogatePredictions, VariantLogits};
use crate::stats::UnitMoments;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum AnalyzerError {
    /// The captured data does not fit what the analyzer was started with.
    #[error("{analyzer}: {message}")]
    Shape { analyzer: &'static str, message: String },
    /// The analyzer cannot run on this model or probe (the driver reports it
    /// once and writes no rows for it).
    #[error("{analyzer} does not apply: {message}")]
    NotApplicable { analyzer: &'static str, message: String },
    /// A tensor operation failed on the device (out of memory, a dtype the
    /// device lacks, …).
    #[error("{analyzer}: {message}")]
    Compute { analyzer: &'static str, message: String },
}

impl AnalyzerError {
    /// Wraps a tensor error with the analyzer's name, for `map_err`.
    pub fn compute(analyzer: &'static str) -> impl Fn(candle_core::Error) -> AnalyzerError {
        move |e| AnalyzerError::Compute { analyzer, message: e.to_string() }
    }
}

/// One computed number. `tap: None` means a network-level metric
/// (table `model_metrics`); `value: None` means undefined on this data (null).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    pub tap: Option<usize>,
    pub metric: &'static str,
    pub value: Option<f64>,
    /// The surrogate a comparison is against (`mu`).
    pub surrogate: Option<String>,
    /// The checkpoint step a comparison is against (`cka_time`).
    pub ref_step: Option<u64>,
    /// Samples and split, when not the probe (`mu` on the held-out split).
    pub samples: Option<(u64, String)>,
    /// The residual block (index into `ModelInfo::residual_blocks`) a row
    /// describes; its `tap` is then the block's last (output) tap.
    pub block: Option<usize>,
    /// (attention layer, head) a row describes (index into
    /// `ModelInfo::attention`); its `tap` is the layer's block's MLP tap.
    pub head: Option<(usize, usize)>,
}

impl MetricValue {
    fn new(tap: Option<usize>, metric: &'static str, value: Option<f64>) -> Self {
        MetricValue {
            tap,
            metric,
            value: value.filter(|v| v.is_finite()),
            surrogate: None,
            ref_step: None,
            samples: None,
            block: None,
            head: None,
        }
    }
    pub fn layer(tap: usize, metric: &'static str, value: Option<f64>) -> Self {
        Self::new(Some(tap), metric, value)
    }
    /// A row of residual block `block` (whose output tap is `tap`).
    pub fn residual_block(block: usize, tap: usize, metric: &'static str, value: Option<f64>) -> Self {
        MetricValue { block: Some(block), ..Self::new(Some(tap), metric, value) }
    }
    /// A row of head `head` of attention layer `layer` (whose block's tap is `tap`).
    pub fn attention_head(layer: usize, head: usize, tap: usize, metric: &'static str, value: Option<f64>) -> Self {
        MetricValue { head: Some((layer, head)), ..Self::new(Some(tap), metric, value) }
    }
    pub fn model(metric: &'static str, value: Option<f64>) -> Self {
        Self::new(None, metric, value)
    }
    pub fn with_surrogate(mut self, name: &str) -> Self {
        self.surrogate = Some(name.to_string());
        self
    }
    pub fn with_ref_step(mut self, step: u64) -> Self {
        self.ref_step = Some(step);
        self
    }
    pub fn with_samples(mut self, n: u64, split: &str) -> Self {
        self.samples = Some((n, split.to_string()));
        self
    }
}

/// An analyzer's result for one checkpoint: its values, and remarks worth
/// telling the user once (e.g. a tap it could not fit).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Finished {
    pub values: Vec<MetricValue>,
    pub notes: Vec<String>,
}

impl Finished {
    pub fn values(values: Vec<MetricValue>) -> Self {
        Finished { values, notes: Vec::new() }
    }
}

/// What an analyzer needs the driver to capture or compute, so that nothing
/// is computed that no selected analyzer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// Per-chunk logits (the probe pass itself; an analyzer that needs only
    /// weights or held-out predictions does not cause one).
    pub logits: bool,
    /// Per-chunk z and a at every tap.
    pub taps: bool,
    /// Per-unit moments of (z, a) at every tap over the whole probe
    /// ([`crate::stats::UnitMoments`]), computed once by the driver and
    /// shared (unit fits, activation regimes, the linearised variants).
    pub moments: bool,
    /// Per-chunk block inputs (what each tap's affine layer receives).
    pub block_inputs: bool,
    /// Centred Gram matrices of every tap's a over the whole probe.
    pub grams: bool,
    /// The same at step 0 and at the run's final checkpoint.
    pub reference_grams: bool,
    /// The weight matrices feeding each tap, here and at step 0.
    pub weights: bool,
    /// Logits of the network with taps replaced by affine surrogates.
    pub variants: bool,
    /// Predictions of the network and of each surrogate on held-out data.
    pub surrogates: bool,
    /// Per-chunk residual streams (transformers).
    pub streams: bool,
    /// Per-chunk attention weights (transformers).
    pub attention: bool,
    /// The effective rank of every tap's Gram matrix: host eigenvalue
    /// problems, which the driver runs beside the device work that follows
    /// the probe pass (the linearised variants) instead of after it.
    pub ranks: bool,
}

impl Needs {
    pub fn union(self, o: Needs) -> Needs {
        Needs {
            logits: self.logits || o.logits,
            taps: self.taps || o.taps,
            moments: self.moments || o.moments,
            block_inputs: self.block_inputs || o.block_inputs,
            grams: self.grams || o.grams,
            reference_grams: self.reference_grams || o.reference_grams,
            weights: self.weights || o.weights,
            variants: self.variants || o.variants,
            surrogates: self.surrogates || o.surrogates,
            streams: self.streams || o.streams,
            attention: self.attention || o.attention,
            ranks: self.ranks || o.ranks,
        }
    }
}

/// Whole-probe or cross-checkpoint inputs, computed by the driver once per
/// checkpoint and shared by the analyzers that asked for them.
#[derive(Default)]
pub struct Extras<'a> {
    pub labels: &'a [i64],
    /// Per tap, when an analyzer asked for `moments`.
    pub moments: Option<&'a [UnitMoments]>,
    pub grams: Option<&'a [Gram]>,
    /// Per tap, [`crate::gram::effective_rank`] of `grams`, when asked for.
    pub ranks: Option<&'a [Option<f64>]>,
    /// (step, Grams) of the step-0 checkpoint.
    pub init_grams: Option<(u64, &'a [Gram])>,
    /// (step, Grams) of the run's last checkpoint.
    pub final_grams: Option<(u64, &'a [Gram])>,
    pub weights: Option<&'a [LayerWeights]>,
    pub init_weights: Option<&'a [LayerWeights]>,
    pub variants: Option<&'a VariantLogits>,
    pub surrogates: &'a [SurrogatePredictions],
}

pub trait Analyzer: Send + Sync {
    /// The `analyzer` column in the tables.
    fn name(&self) -> &'static str;
    /// Bumped whenever the numbers it writes change; part of every row, so a
    /// bump makes the driver recompute exactly this analyzer's rows.
    fn version(&self) -> u32;
    fn description(&self) -> &'static str;
    /// The `metric` names it may write.
    fn metrics(&self) -> &'static [&'static str];
    fn needs(&self) -> Needs;
    /// A fresh accumulator for one checkpoint.
    fn start(&self, model: &ModelInfo) -> Box<dyn Accumulator>;
}

pub trait Accumulator: Send {
    /// Sees each probe chunk in order; analyzers that need only extras keep
    /// this default.
    fn observe(&mut self, _chunk: &Chunk<'_>) -> Result<(), AnalyzerError> {
        Ok(())
    }
    fn finish(self: Box<Self>, extras: &Extras<'_>) -> Result<Finished, AnalyzerError>;
}

/// Checks that a chunk carries the taps an accumulator was started for:
/// z and a of every tap hold `units` values for each of the chunk's samples.
pub(crate) fn check_taps(analyzer: &'static str, model: &ModelInfo, chunk: &Chunk<'_>) -> Result<(), AnalyzerError> {
    if chunk.taps.len() != model.taps.len() {
        return Err(AnalyzerError::Shape { analyzer, message: format!("expected {} taps, got {}", model.taps.len(), chunk.taps.len()) });
    }
    let b = chunk.samples;
    for (info, tap) in model.taps.iter().zip(chunk.taps) {
        for (what, t) in [("z", tap.z), ("a", tap.a)] {
            let dims = t.dims();
            let per_sample: usize = dims.iter().skip(1).product();
            if dims.first() != Some(&b) || per_sample != info.units {
                return Err(AnalyzerError::Shape {
                    analyzer,
                    message: format!("tap {} {what}: expected {b} samples × {} units, got shape {dims:?}", info.index, info.units),
                });
            }
        }
    }
    Ok(())
}
