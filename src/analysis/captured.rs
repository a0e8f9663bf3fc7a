//! Runs trained in PyTorch with an architecture lintrace does not rebuild:
//! the target made of their captured activations (`crate::activations`),
//! and the analysis of one such file. Every analyzer that needs only what
//! was captured runs; those that need the model itself (the linearised
//! variants, which replace a tap and run on) report once that they do not
//! apply; `mu` compares the captured predictions on the probe with those of
//! the surrogates given.

use super::capture::{self, Outcome, Shared};
use super::context::TargetContext;
use super::target::{Origin, Target};
use crate::activations::{self, ActivationFile, Layout};
use crate::probe;
use crate::run;
use crate::surrogate::Source;
use analyzers::mu::SurrogatePredictions;
use analyzers::{Analyzer, AnalyzerError, Needs};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::Path;

/// Why an analyzer cannot run on captured activations, if it cannot.
pub fn not_applicable(needs: Needs) -> Option<&'static str> {
    needs.variants.then_some(
        "it replaces taps by their affine surrogates and runs the network on, which needs the model itself (a lintrace architecture, or a Hugging Face one)",
    )
}

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

/// Whether a file is an activations file (rather than a checkpoint).
fn is_activations(path: &Path) -> bool {
    ActivationFile::open(path).is_ok()
}

/// A surrogate's predictions on the target's probe: from its activations
/// file (same probe), or by running a lintrace checkpoint on the probe.
fn predictions_of(target: &Target, path: &Path, dev: &Device) -> Result<(String, Vec<usize>)> {
    if is_activations(path) {
        let f = ActivationFile::open(path)?;
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

fn surrogates(target: &Target, sources: &[Source], dev: &Device, notes: &mut Vec<String>) -> Result<Surrogates> {
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
        notes
            .push(format!("{}: mu: compared on the probe (a PyTorch run's held-out split is not pushed through its model)", target.run_id));
    }
    Ok(out)
}

impl Surrogates {
    /// F's predictions (the file's) against every surrogate at `step`.
    fn predictions(&self, target: &Target, file: &ActivationFile, dev: &Device) -> Result<Vec<SurrogatePredictions>> {
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

impl Target {
    /// A run folder with `activations/` (and `probe.safetensors`) and no
    /// run.json: every file must have the same layout and probe.
    pub(super) fn captured(dir: &Path) -> Result<Target> {
        let files = activations::list(dir)?;
        let Some((_, first_path)) = files.first() else { bail!("{}: no activation files", dir.join(activations::DIR).display()) };
        let probe_path = dir.join(run::PROBE);
        if !probe_path.is_file() {
            bail!("{}: missing (the probe the activations were captured on)", probe_path.display());
        }
        let probe = probe::load(&probe_path)?;
        let first = ActivationFile::open(first_path)?;
        check_probe(&first, &probe, &probe_path)?;
        let run_id = if first.run_id.is_empty() {
            let abs = dir.canonicalize().unwrap_or(dir.to_path_buf());
            abs.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "captured".into())
        } else {
            first.run_id.clone()
        };
        Ok(Target {
            run_id,
            out_dir: dir.join(run::ANALYSIS),
            probe,
            spec: None,
            checkpoints: files.into_iter().map(|(_, p)| p).collect(),
            fallback: None,
            sweep_id: None,
            origin: Origin::Captured { layout: first.layout },
            verified: Default::default(),
        })
    }
}

/// A file's probe must be the run's: same hash, same number of samples and
/// predictions.
fn check_probe(file: &ActivationFile, probe: &probe::Probe, probe_path: &Path) -> Result<()> {
    if file.probe_hash != probe.hash {
        bail!("{}: captured on probe {}, but {} holds probe {}", file.path.display(), file.probe_hash, probe_path.display(), probe.hash);
    }
    if file.n != probe.len() || file.n * file.layout.predictions_per_sample != probe.labels.len() {
        bail!(
            "{}: holds {} samples × {} predictions, but the probe has {} samples and {} labels",
            file.path.display(),
            file.n,
            file.layout.predictions_per_sample,
            probe.len(),
            probe.labels.len()
        );
    }
    if let Some(&bad) = probe.labels.iter().find(|&&y| y < 0 || y as usize >= file.layout.num_classes) {
        bail!("{}: probe label {bad} is outside the {} classes of the captured logits", file.path.display(), file.layout.num_classes);
    }
    Ok(())
}

/// Opens the activation file of one step, checked against the target's
/// layout and probe.
pub fn open(target: &Target, layout: &Layout, path: &Path, step: u64) -> Result<ActivationFile> {
    let file = ActivationFile::open(path)?;
    if file.step != step {
        bail!("{}: metadata step {} does not match the file name's step {step}", path.display(), file.step);
    }
    if &file.layout != layout {
        bail!("{}: its layout differs from the run's first file (captured with other taps?): capture every step alike", path.display());
    }
    check_probe(&file, &target.probe, &target.out_dir.with_file_name(run::PROBE))?;
    Ok(file)
}

/// The whole-run inputs of captured activations: the step-0 and final
/// Grams for `cka_time`, the step-0 weights for `weights`.
pub fn prepare(
    target: &Target,
    layout: &Layout,
    needs: Needs,
    sources: &[Source],
    final_step: Option<u64>,
    chunk: usize,
    dev: &Device,
    notes: &mut Vec<String>,
) -> Result<TargetContext> {
    let mut ctx = TargetContext::default();
    if needs.surrogates {
        ctx.captured_surrogates = Some(surrogates(target, sources, dev, notes)?);
    }
    let load = |step: u64| -> Result<ActivationFile> {
        let path = target
            .checkpoints
            .iter()
            .find(|p| target.step_of(p) == Some(step))
            .with_context(|| format!("no activations for step {step}"))?;
        open(target, layout, path, step)
    };
    if needs.reference_grams {
        for (which, step) in [("init", Some(0)), ("final", final_step)] {
            let Some(step) = step else { continue };
            match load(step).and_then(|f| capture::captured_grams(&f, &target.probe, chunk, dev)) {
                Ok(g) if which == "init" => ctx.init_grams = Some((step, g)),
                Ok(g) => ctx.final_grams = Some((step, g)),
                Err(e) => notes.push(format!("{}: cka_time has no {which} reference: {e:#}", target.run_id)),
            }
        }
    }
    if needs.weights {
        match load(0).and_then(|f| f.weights()) {
            Ok(w) => ctx.init_weights = Some(w),
            Err(e) => notes.push(format!("{}: weights: rel_dist_from_init is null: step 0 unreadable ({e:#})", target.run_id)),
        }
    }
    Ok(ctx)
}

/// Analyses one step's captured activations with the analyzers `subset`
/// (all of which apply: see [`not_applicable`]).
pub fn run_job(
    target: &Target,
    layout: &Layout,
    path: &Path,
    step: u64,
    subset: &[&dyn Analyzer],
    ctx: &TargetContext,
    chunk: usize,
    dev: &Device,
) -> Result<Outcome> {
    let file = open(target, layout, path, step)?;
    let needs = subset.iter().fold(Needs::default(), |n, a| n.union(a.needs()));
    let weights = if needs.weights { Some(file.weights()?) } else { None };
    let surrogates = match (&ctx.captured_surrogates, needs.surrogates) {
        (Some(s), true) => s.predictions(target, &file, dev)?,
        _ => Vec::new(),
    };
    let init_grams = ctx.init_grams.as_ref().map(|(s, g)| (*s, g.as_slice()));
    let final_grams = ctx.final_grams.as_ref().map(|(s, g)| (*s, g.as_slice()));
    let own_grams = [init_grams, final_grams].into_iter().flatten().find(|(s, _)| *s == step).map(|(_, g)| g);
    let shared = Shared {
        init_grams,
        final_grams,
        grams: own_grams,
        weights: weights.as_deref(),
        init_weights: ctx.init_weights.as_deref(),
        surrogates: &surrogates,
    };
    capture::run_captured(&file, &target.probe, subset, chunk, dev, &shared).with_context(|| format!("{}", path.display()))
}

/// The outcome of an analyzer that does not apply to captured activations.
pub fn refused(analyzer: &dyn Analyzer, why: &str) -> AnalyzerError {
    AnalyzerError::NotApplicable { analyzer: analyzer.name(), message: format!("on activations captured in PyTorch: {why}") }
}
