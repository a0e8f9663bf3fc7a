//! The names inside a run folder and a sweep folder (`run.rs` and
//! `sweep/file.rs` in `lintrace` describe their contents): a leaf, so that
//! code which only needs a name (the analysis folder to skip when listing
//! checkpoints, the tables a query reads) depends on neither the run
//! manifest nor training.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "run.json";
pub const PROBE: &str = "probe.safetensors";
pub const TRAIN_LOG: &str = "train_log.parquet";
pub const CHECKPOINTS: &str = "checkpoints";
pub const ANALYSIS: &str = "analysis";
/// A sweep folder's record of its axes and runs.
pub const SWEEP_FILE: &str = "sweep.json";
/// The version of [`SWEEP_FILE`]'s format this lintrace reads and writes.
pub const SWEEP_FORMAT_VERSION: u32 = 1;

pub fn is_run_dir(p: &Path) -> bool {
    p.join(MANIFEST).is_file()
}

/// The run folders directly under `root`, sorted.
pub fn run_dirs_under(root: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("{}: cannot read", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_run_dir(p))
        .collect();
    v.sort();
    Ok(v)
}

pub fn is_sweep_dir(dir: &Path) -> bool {
    dir.join(SWEEP_FILE).is_file()
}

/// What a report shows of a sweep: its name and the keys of its axes, read
/// from [`SWEEP_FILE`] without the runs' training configurations.
#[derive(Debug, Clone, Deserialize)]
pub struct SweepHeader {
    pub format_version: u32,
    pub name: String,
    pub axes: Vec<AxisKeys>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AxisKeys {
    pub keys: Vec<String>,
}

impl SweepHeader {
    pub fn load(dir: &Path) -> Result<SweepHeader> {
        read_sweep_file(dir, |h: &SweepHeader| h.format_version)
    }
}

/// `dir`'s [`SWEEP_FILE`] read as `T` (the whole sweep, or its header),
/// refused in one line naming the file when it is unreadable, malformed or
/// of another format version (`version` reads it from `T`).
pub fn read_sweep_file<T: serde::de::DeserializeOwned>(dir: &Path, version: impl Fn(&T) -> u32) -> Result<T> {
    let path = dir.join(SWEEP_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let value: T = serde_json::from_str(&text).with_context(|| format!("{}: malformed sweep file", path.display()))?;
    let found = version(&value);
    if found != SWEEP_FORMAT_VERSION {
        bail!("{}: sweep format {found} is not supported (this lintrace reads {SWEEP_FORMAT_VERSION})", path.display());
    }
    Ok(value)
}
