//! The names inside a run folder (`run.rs` describes the folder): a leaf,
//! so that code which only needs a name (the analysis folder to skip when
//! listing checkpoints) does not depend on the run manifest and, through
//! it, on training.

pub const MANIFEST: &str = "run.json";
pub const PROBE: &str = "probe.safetensors";
pub const TRAIN_LOG: &str = "train_log.parquet";
pub const CHECKPOINTS: &str = "checkpoints";
pub const ANALYSIS: &str = "analysis";
