//! `mu` on a run of captured activations (`captured.rs`): the surrogates'
//! predictions on the probe, from other captured runs or from lintrace
//! checkpoints run on the probe. A leaf below both the analysis context,
//! which holds them, and the driver of captured runs, which uses them.

use super::target::Target;
use crate::activations::{self, ActivationFile};
use crate::run;
use crate::surrogate::Source;
use analyzers::mu::SurrogatePredictions;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::Path;

/// `mu`'s surrogates for a run of captured activations, compared on the
/// probe (there is no held-out split lintrace could push through a PyTorch
/// model): other captured runs (a linear classifier or a partly linear
/// twin trained in PyTorch, its logits captured with `taps={}`), their
/// activation files, or lintrace checkpoints and runs of a model lintrace
/// runs itself on the same probe.
#[derive(Default)]
pub struct Surrogates {
    /// (column name, predictions on the probe) of surrogates fixed in F's step.
    fixed: Vec<(String, Vec<usize>)>,
    /// (folder, run id) of runs compared at F's own step.
    same_step: Vec<(std::path::PathBuf, String)>,
}

/// The argmax of every row of a file's logits.
fn file_predictions(file: &ActivationFile) -> Result<Vec<usize>> {
    let rows = file.n * file.layout.predictions_per_sample;
    let am: Vec<u32> = file.rows("logits", 0, rows, &Device::Cpu)?.argmax(1)?.to_vec1()?;
    Ok(am.into_iter().map(|v| v as usize).collect())
}

/// A surrogate's predictions on the target's probe: from its activations
/// file (same probe), or by running a lintrace checkpoint on the probe.
fn predictions_of(target: &Target, path: &Path, dev: &Device) -> Result<(String, Vec<usize>)> {
    // An activations file (opened and checked once), else a checkpoint.
    if let Ok(f) = ActivationFile::open(path) {
        if f.probe_hash != target.probe.hash {
            bail!("surrogate {}: captured on probe {}, not this run's {}", path.display(), f.probe_hash, target.probe.hash);
        }
        return Ok((format!("{}@{}", f.run_id, f.step), file_predictions(&f)?));
    }
    let (name, model) = crate::surrogate::load_checkpoint(path, dev)?;
    let batches = crate::batches::Batches::probe(&target.probe, 256, dev)?;
    let p = crate::surrogate::predict(&model, &batches).with_context(|| format!("surrogate {}: on this run's probe", path.display()))?;
    Ok((name, p))
}

/// The file of a surrogate run at `step` (None: its last), captured or
/// lintrace's own.
fn run_file(dir: &Path, step: Option<u64>) -> Result<Option<std::path::PathBuf>> {
    if activations::has_activations(dir) {
        let files = activations::list(dir)?;
        return Ok(match step {
            None => files.last().map(|(_, p)| p.clone()),
            Some(s) => files.into_iter().find(|(t, _)| *t == s).map(|(_, p)| p),
        });
    }
    Ok(match step {
        None => Some(crate::surrogate::final_checkpoint(dir)?),
        Some(s) => Some(run::checkpoint_dir(dir).join(crate::checkpoint::file_name(s))).filter(|p| p.is_file()),
    })
}

impl Surrogates {
    /// The surrogates of `sources`, for a run of captured activations.
    pub fn prepare(target: &Target, sources: &[Source], dev: &Device, notes: &mut Vec<String>) -> Result<Surrogates> {
        let mut out = Surrogates::default();
        for source in sources {
            match source {
            Source::Linear => notes.push(format!(
                "{}: mu: the linear surrogate is fitted on the run's training data, which lintrace does not have for a PyTorch run: train one in PyTorch, capture its logits (capture_activations with taps={{}}) and pass --surrogate THAT_RUN (docs/pytorch.md)",
                target.run_id
            )),
            Source::Checkpoint(path) => out.fixed.push(predictions_of(target, path, dev)?),
            Source::Run { dir, same_step: false } => {
                let path = run_file(dir, None)?.with_context(|| format!("{}: surrogate run has no checkpoints", dir.display()))?;
                out.fixed.push(predictions_of(target, &path, dev)?);
            }
            Source::Run { dir, same_step: true } => {
                let run_id = if activations::has_activations(dir) {
                    let (_, first) = activations::list(dir)?.into_iter().next().context("no activations")?;
                    ActivationFile::open(&first)?.run_id
                } else {
                    crate::surrogate::run_id(dir)?
                };
                out.same_step.push((dir.clone(), run_id));
            }
        }
        }
        if !out.fixed.is_empty() || !out.same_step.is_empty() {
            notes.push(format!(
                "{}: mu: compared on the probe (a PyTorch run's held-out split is not pushed through its model)",
                target.run_id
            ));
        }
        Ok(out)
    }

    /// F's predictions (the file's) against every surrogate at `step`.
    pub fn predictions(&self, target: &Target, file: &ActivationFile, dev: &Device) -> Result<Vec<SurrogatePredictions>> {
        let f = file_predictions(file)?;
        let y: Vec<usize> = target.probe.labels.iter().map(|&v| v as usize).collect();
        let accuracy = |s: &[usize]| {
            let right = s.iter().zip(&y).filter(|(a, b)| a == b).count();
            (right as f64 / y.len().max(1) as f64, y.len() as u64)
        };
        let entry = |name: String, s: Vec<usize>| SurrogatePredictions {
            name,
            split: "probe".into(),
            f: f.clone(),
            probe_accuracy: Some(accuracy(&s)),
            s,
            y: y.clone(),
            train_accuracy: None,
        };
        let mut out: Vec<SurrogatePredictions> = self.fixed.iter().map(|(n, s)| entry(n.clone(), s.clone())).collect();
        for (dir, run_id) in &self.same_step {
            let Some(path) = run_file(dir, Some(file.step))? else { continue };
            let (_, s) = predictions_of(target, &path, dev)?;
            out.push(entry(format!("{run_id}@same"), s));
        }
        Ok(out)
    }
}
