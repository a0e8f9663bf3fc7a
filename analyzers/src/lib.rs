//! lintrace's metric implementations.
//!
//! Every analyzer is a pure function of what the driver captured while pushing
//! the probe through one checkpoint: per-tap pre-activations `z` and
//! activations `a`, the logits and the labels. Nothing here touches files or
//! devices; the `lintrace` crate owns all I/O. The metric definitions are the
//! contract in `METRICS.md`.
//!
//! Analyzers see the probe in chunks (so that memory does not grow with the
//! probe) through an [`Accumulator`] that each analyzer starts per checkpoint.

pub mod activation_regime;
pub mod analyzer;
pub mod block_linear_fit;
pub mod capture;
pub mod cka_time;
pub mod gram;
pub mod info;
pub mod linearized_agreement;
pub mod mu;
pub mod performance;
pub mod registry;
pub mod representation;
pub mod stats;
pub mod unit_linear_fit;
pub mod weights;

pub use analyzer::{Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
pub use capture::{ActivationKind, BlockGeometry, Chunk, LayerKind, LayerWeights, Matrix, ModelInfo, TapChunk, TapInfo};
pub use registry::{all as all_analyzers, by_name, names};
