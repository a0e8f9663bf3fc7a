//! What a run needs beyond its weights to continue exactly where it
//! stopped: the optimizer's buffers, the position in the data order and the
//! augmentation stream. Written as `RUN_DIR/train_state.safetensors` right
//! after each checkpoint, so an interrupted run resumes from its last
//! checkpoint and produces the same bytes as a run that never stopped.

use crate::checkpoint;
use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub const FILE: &str = "train_state.safetensors";

/// Where the loop stands after `step` updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub step: u64,
    pub samples_seen: u64,
    /// Data orders drawn so far (the current one is number `epoch - 1`).
    pub epoch: u64,
    /// Next index into the current order.
    pub cursor: usize,
    /// Word position of the augmentation stream (u128 as a decimal string).
    pub aug_word_pos: String,
    /// Optimizer updates taken (Adam's bias correction).
    pub optimizer_t: i32,
    /// Training seconds so far. Not saved: wall time differs from run to
    /// run, and the state of equal runs must be equal byte for byte; a
    /// resumed run takes it from its train log.
    #[serde(default, skip_serializing)]
    pub wall_seconds: f64,
}

/// The optimizer's buffers by parameter name (`m` momentum or first moment,
/// `v` second moment), on the host.
#[derive(Debug, Default)]
pub struct Buffers {
    pub m: HashMap<String, Tensor>,
    pub v: HashMap<String, Tensor>,
}

pub fn save(run_dir: &Path, pos: &Position, buffers: &Buffers) -> Result<()> {
    let mut data = Vec::new();
    for (prefix, map) in [("m.", &buffers.m), ("v.", &buffers.v)] {
        for (name, t) in map {
            data.push(checkpoint::f32_entry(&format!("{prefix}{name}"), t)?);
        }
    }
    // The buffers come from hash maps: a fixed order keeps the file stable.
    data.sort_by(|a, b| a.0.cmp(&b.0));
    let md = HashMap::from([("position".to_string(), serde_json::to_string(pos)?)]);
    checkpoint::write_f32_safetensors(&run_dir.join(FILE), &data, md).map(|_| ())
}

pub fn load(run_dir: &Path, device: &Device) -> Result<(Position, Buffers)> {
    let path = run_dir.join(FILE);
    load_inner(&path, device).with_context(|| format!("{}", path.display()))
}

fn load_inner(path: &Path, device: &Device) -> Result<(Position, Buffers)> {
    let bytes = std::fs::read(path).context("cannot read")?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("not a valid safetensors file ({e})"))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("not a valid safetensors file ({e})"))?;
    let pos: Position = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("position"))
        .ok_or_else(|| anyhow!("no 'position' metadata"))
        .and_then(|s| serde_json::from_str(s).context("malformed 'position' metadata"))?;
    let mut buffers = Buffers::default();
    for (name, view) in st.tensors() {
        let t = Tensor::from_raw_buffer(view.data(), DType::F32, view.shape(), device).with_context(|| format!("tensor '{name}'"))?;
        if let Some(p) = name.strip_prefix("m.") {
            buffers.m.insert(p.to_string(), t);
        } else if let Some(p) = name.strip_prefix("v.") {
            buffers.v.insert(p.to_string(), t);
        }
    }
    Ok((pos, buffers))
}
