//! lintrace's metric implementations.
//!
//! Every analyzer is a pure function of what the driver captured while pushing
//! the probe through one checkpoint: per-tap pre-activations `z` and
//! activations `a`, the logits and the labels. Nothing here touches files or
//! devices; the `lintrace` crate owns all I/O. The metric definitions are the
//! contract in `docs/metrics.md`.
//!
//! Analyzers see the probe in chunks (so that memory does not grow with the
//! probe) through an [`Accumulator`] that each analyzer starts per checkpoint.

pub mod activation_regime;
pub mod analyzer;
pub mod attention;
pub mod block_linear_fit;
pub mod capture;
pub mod cka_time;
pub mod gram;
pub mod info;
pub mod inputs;
pub mod linear_fit;
pub mod linearized_agreement;
pub mod mu;
pub mod performance;
pub mod registry;
pub mod representation;
pub mod residual_linear_fit;
pub mod stats;
pub mod unit_linear_fit;
pub mod weights;

pub use analyzer::{Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
pub use capture::{
    ActivationKind, AttentionInfo, BlockGeometry, Chunk, LayerKind, LayerWeights, Matrix, ModelInfo, ResidualBlockInfo, TapChunk, TapInfo,
};
pub use registry::{all as all_analyzers, by_name, names};

/// The degree of parallelism of every faer routine the analyzers call
/// (products, eigenvalues, Cholesky, SVD). faer splits its work by this
/// degree; a degree that followed the thread count made results differ in
/// the last bits between 1 and 2 threads (effective rank, 2.5e-14
/// relative). A fixed degree gives the same partition, hence the same bits,
/// on any machine; rayon runs the parts on whatever threads exist.
pub const FAER_PARALLELISM: usize = 8;

pub fn faer_par() -> faer::Par {
    faer::Par::rayon(FAER_PARALLELISM)
}

/// Makes faer's global parallelism (used by its decompositions) the fixed
/// degree above. The analysis driver calls this once before analysing.
pub fn fix_faer_parallelism() {
    faer::set_global_parallelism(faer_par());
}
