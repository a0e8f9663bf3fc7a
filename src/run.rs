//! A run directory and its manifest, `run.json`:
//!
//! ```text
//! RUN_DIR/
//!   run.json                 resolved config, dataset fingerprint, status
//!   probe.safetensors        the fixed probe batch
//!   train_log.parquet        one row per step
//!   checkpoints/step_XXXXXXXX.safetensors
//!   analysis/                written by lintrace-analyze
//! ```

use crate::atomic::write_json_atomic;
use crate::config::TrainConfig;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use crate::layout::{is_run_dir, run_dirs_under, ANALYSIS, CHECKPOINTS, MANIFEST, PROBE, TRAIN_LOG};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Finished,
    Failed,
    /// The loss stopped being finite; training stopped there
    /// (`RunManifest::diverged_at_step`), its checkpoints are kept.
    Diverged,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Finished => "finished",
            Status::Failed => "failed",
            Status::Diverged => "diverged",
        }
    }
    /// Training is over: finished, or diverged (which a rerun would repeat).
    pub fn is_done(self) -> bool {
        matches!(self, Status::Finished | Status::Diverged)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub name: String,
    pub fingerprint: String,
    pub classes: Vec<String>,
    pub sample_shape: Vec<usize>,
    pub n_train: usize,
    pub n_test: usize,
    pub normalisation: Option<crate::data::Normalisation>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunManifest {
    pub run_id: String,
    pub status: Status,
    pub lintrace_version: String,
    pub config: TrainConfig,
    /// The model spec (also in every checkpoint).
    pub spec: serde_json::Value,
    pub n_parameters: usize,
    pub n_taps: usize,
    pub dataset: DatasetInfo,
    pub probe_hash: String,
    pub probe_size: usize,
    pub total_steps: u64,
    pub steps_done: u64,
    pub checkpoint_steps: Vec<u64>,
    pub started_unix: u64,
    pub wall_seconds: f64,
    pub error: Option<String>,
    /// SHA-256 (hex) of every checkpoint file, by step, as it was written;
    /// the analyzer verifies each file against it before analysing it.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub checkpoint_sha256: std::collections::BTreeMap<u64, String>,
    /// The step whose loss was not finite, when the run diverged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged_at_step: Option<u64>,
}

impl RunManifest {
    pub fn read(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: malformed run manifest", path.display()))
    }

    pub fn write(&self, run_dir: &Path) -> Result<()> {
        write_json_atomic(&run_dir.join(MANIFEST), self)
    }
}

pub fn checkpoint_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(CHECKPOINTS)
}
