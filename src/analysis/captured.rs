//! Runs trained in PyTorch with an architecture lintrace does not rebuild:
//! the target made of their captured activations (`crate::activations`),
//! and the analysis of one such file. Every analyzer that needs only what
//! was captured runs; those that need the model itself (the linearised
//! variants, which replace a tap and run on) report once that they do not
//! apply; `mu` compares the captured predictions on the probe with those of
//! the surrogates given.

use super::capture::{self, Outcome};
use super::captured_mu::Surrogates;
use super::context::TargetContext;
use super::target::{Origin, Target};
use crate::activations::{self, ActivationFile, Layout};
use crate::probe;
use crate::run;
use crate::surrogate::Source;
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
        ctx.captured_surrogates = Some(Surrogates::prepare(target, sources, dev, notes)?);
    }
    let load = |step: u64| -> Result<ActivationFile> {
        let path = target.checkpoint_at(step).with_context(|| format!("no activations for step {step}"))?;
        open(target, layout, path, step)
    };
    ctx.prepare_references(
        target,
        needs,
        final_step,
        notes,
        |step| capture::captured_grams(&load(step)?, &target.probe, chunk, dev),
        || load(0).and_then(|f| f.weights()),
    );
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
    let shared = ctx.shared(step, weights.as_deref(), &surrogates);
    capture::run_captured(&file, &target.probe, subset, chunk, dev, &shared).with_context(|| format!("{}", path.display()))
}

/// The outcome of an analyzer that does not apply to captured activations.
pub fn refused(analyzer: &dyn Analyzer, why: &str) -> AnalyzerError {
    AnalyzerError::NotApplicable { analyzer: analyzer.name(), message: format!("on activations captured in PyTorch: {why}") }
}
