//! The one trait every metric implements, and the rows it produces.

use crate::capture::{Chunk, ModelInfo};

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum AnalyzerError {
    /// The captured data does not fit what the analyzer was started with.
    #[error("{analyzer}: {message}")]
    Shape {
        analyzer: &'static str,
        message: String,
    },
    /// The analyzer cannot run on this model or probe (the driver reports it
    /// once and writes no rows for it).
    #[error("{analyzer} does not apply: {message}")]
    NotApplicable {
        analyzer: &'static str,
        message: String,
    },
}

/// One computed number. `tap: None` means a network-level metric
/// (table `model_metrics`); `value: None` means undefined on this data (null).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    pub tap: Option<usize>,
    pub metric: &'static str,
    pub value: Option<f64>,
}

impl MetricValue {
    pub fn layer(tap: usize, metric: &'static str, value: Option<f64>) -> Self {
        MetricValue {
            tap: Some(tap),
            metric,
            value: value.filter(|v| v.is_finite()),
        }
    }
    pub fn model(metric: &'static str, value: Option<f64>) -> Self {
        MetricValue {
            tap: None,
            metric,
            value: value.filter(|v| v.is_finite()),
        }
    }
}

/// What an analyzer needs captured, so that the driver can skip copying taps
/// when only logits are wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    pub taps: bool,
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
    fn observe(&mut self, chunk: &Chunk<'_>) -> Result<(), AnalyzerError>;
    fn finish(self: Box<Self>) -> Result<Vec<MetricValue>, AnalyzerError>;
}

/// Checks that a chunk carries the taps an accumulator was started for.
pub(crate) fn check_taps(
    analyzer: &'static str,
    model: &ModelInfo,
    chunk: &Chunk<'_>,
) -> Result<(), AnalyzerError> {
    if chunk.taps.len() != model.taps.len() {
        return Err(AnalyzerError::Shape {
            analyzer,
            message: format!(
                "expected {} taps, got {}",
                model.taps.len(),
                chunk.taps.len()
            ),
        });
    }
    for (info, tap) in model.taps.iter().zip(chunk.taps) {
        for (what, m) in [("z", tap.z), ("a", tap.a)] {
            if m.cols != info.units || m.rows != chunk.labels.len() {
                return Err(AnalyzerError::Shape {
                    analyzer,
                    message: format!(
                        "tap {} {what}: expected {} × {}, got {} × {}",
                        info.index,
                        chunk.labels.len(),
                        info.units,
                        m.rows,
                        m.cols
                    ),
                });
            }
        }
    }
    Ok(())
}
