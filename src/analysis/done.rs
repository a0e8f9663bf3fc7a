//! Which (step, analyzer, version, probe hash) results a run already has:
//! `analysis/analyzed.json`, written after the tables, so that an analyzer
//! that legitimately wrote no rows (say, `activation_regime` on a tanh
//! network) is not recomputed either.

use crate::atomic::write_json_atomic;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DoneKey {
    pub step: u64,
    pub analyzer: String,
    pub version: u32,
    pub probe_hash: String,
    /// What a cross-checkpoint result was computed against (cka_time: the
    /// final step; mu: the surrogates and split), so that a change in it
    /// invalidates exactly those results.
    #[serde(default)]
    pub reference: Option<String>,
    /// Checkpoints from elsewhere: a hash of the weights, the spec and the
    /// renames they were analysed with, since neither a run manifest nor a
    /// file name pins them (a folder re-analysed with another spec, or a
    /// checkpoint overwritten in place, is recomputed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Done {
    pub entries: BTreeSet<DoneKey>,
}

pub const FILE: &str = "analyzed.json";

impl Done {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        if !path.exists() {
            return Ok(Done::default());
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: malformed (delete it or pass --force)", path.display()))
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json_atomic(&dir.join(FILE), self)
    }

    /// Marks (step, analyzer) done at `version`, forgetting other versions.
    pub fn mark(&mut self, key: DoneKey) {
        self.entries.retain(|k| !(k.step == key.step && k.analyzer == key.analyzer));
        self.entries.insert(key);
    }
}
