//! Surrogates S for `mu`: the `linear` classifier, another run (its final
//! checkpoint, or the checkpoint at the same step as F) or a checkpoint
//! file; and the held-out data they are compared on.

pub mod linear;

use crate::batches::Batches;
use crate::checkpoint;
use crate::model::Model;
use crate::run::{self, RunManifest};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Logistic regression on the raw inputs (cached per dataset).
    Linear,
    /// One fixed checkpoint file.
    Checkpoint(PathBuf),
    /// A run: its last checkpoint, or (`RUN@same`) the checkpoint at F's step.
    Run { dir: PathBuf, same_step: bool },
}

impl Source {
    /// `linear`, `path/to/step_N.safetensors`, `runs/RUN` or `runs/RUN@same`.
    pub fn parse(s: &str) -> Result<Source> {
        if s == "linear" {
            return Ok(Source::Linear);
        }
        let (path, same_step) = match s.strip_suffix("@same") {
            Some(p) => (PathBuf::from(p), true),
            None => (PathBuf::from(s), false),
        };
        if path.is_file() && !same_step {
            return Ok(Source::Checkpoint(path));
        }
        if run::is_run_dir(&path) || crate::activations::has_activations(&path) {
            return Ok(Source::Run { dir: path, same_step });
        }
        bail!("surrogate '{s}': expected 'linear', a checkpoint or activations file, or a run folder (holding run.json or activations/), optionally with '@same'")
    }
}

/// Data that F and its surrogates are compared on.
pub struct EvalSet {
    /// `test` (the run's held-out split) or `probe`.
    pub split: String,
    pub x: Vec<f32>,
    pub sample_shape: Vec<usize>,
    pub y: Vec<usize>,
}

impl EvalSet {
    /// Labels (predictions compared): one per sample, or per (window,
    /// position) for a language model.
    pub fn len(&self) -> usize {
        self.y.len()
    }
    /// Samples (windows for a language model).
    pub fn samples(&self) -> usize {
        self.x.len() / self.sample_shape.iter().product::<usize>().max(1)
    }
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
    /// The inputs on `device`, uploaded once, in chunks.
    pub fn batches(&self, chunk: usize, device: &Device) -> Result<Batches> {
        let per = self.y.len() / self.samples().max(1);
        Batches::new(&self.x, &self.sample_shape, crate::batches::windows_per_chunk(chunk, per), device)
    }
}

/// Argmax predictions of `model` on `batches` (computed on the device; only
/// the class indices come back).
pub fn predict(model: &Model, batches: &Batches) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(batches.len());
    for item in batches.iter() {
        let (_, x) = item?;
        let am: Vec<u32> = model.logits(&x)?.argmax(1)?.to_vec1()?;
        out.extend(am.into_iter().map(|v| v as usize));
    }
    Ok(out)
}

/// A loaded checkpoint surrogate: its column name and model.
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<(String, Model)> {
    let loaded = checkpoint::load(path, None)?;
    let name = format!("{}@{}", loaded.meta.run_id, loaded.meta.step);
    Ok((name, loaded.model(device)?))
}

/// The last checkpoint of a run.
pub fn final_checkpoint(dir: &Path) -> Result<PathBuf> {
    checkpoint::list(&run::checkpoint_dir(dir), false)?.pop().with_context(|| format!("{}: run has no checkpoints", dir.display()))
}

/// The run id of a surrogate run folder.
pub fn run_id(dir: &Path) -> Result<String> {
    Ok(RunManifest::read(dir)?.run_id)
}
