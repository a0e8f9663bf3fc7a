//! The analysis driver: finds runs and checkpoints, skips what is already
//! computed, pushes the probe through each remaining checkpoint (in parallel
//! within a memory bound), and merges the rows into the run's tables.

pub mod capture;
mod captured;
mod captured_mu;
pub mod context;
mod done;
pub mod inventory;
mod rows;
pub mod runs_table;
mod target;

pub use context::layer_weights;
pub use done::{Done, DoneKey};
pub use target::{discover, discover_with, External, HfProbe, Target};

use crate::device;
use analyzers::{Analyzer, AnalyzerError, Finished, Needs};
use anyhow::{bail, Context, Result};
use context::TargetContext;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    /// Analyzer names; empty = every registered analyzer.
    pub analyzers: Vec<String>,
    /// auto | cpu | cuda
    pub device: String,
    /// Recompute rows that already exist.
    pub force: bool,
    /// Probe samples per forward pass; `None`: [`Target::default_chunk`]
    /// (256, fewer for samples whose recorded values are large).
    pub chunk_size: Option<usize>,
    /// Upper bound on the memory that concurrent checkpoints may use.
    pub max_memory_bytes: u64,
    /// Upper bound on checkpoints analysed at once (0 = the thread count).
    pub jobs: usize,
    pub quiet: bool,
    /// Surrogates for `mu` (`linear`, a run, `RUN@same`, a checkpoint).
    pub surrogates: Vec<String>,
    /// Where `mu` compares predictions: `test` (the held-out split) or `probe`.
    pub mu_split: String,
}

impl AnalyzeOptions {
    /// Probe samples per forward pass, as resolved for the target at hand.
    pub fn chunk(&self) -> usize {
        self.chunk_size.unwrap_or(DEFAULT_CHUNK)
    }
}

/// Probe samples per forward pass unless a sample's recorded values are
/// large ([`Target::default_chunk`]).
pub const DEFAULT_CHUNK: usize = 256;

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions {
            analyzers: Vec::new(),
            device: "auto".into(),
            force: false,
            chunk_size: None,
            max_memory_bytes: 4 << 30,
            jobs: 0,
            quiet: false,
            surrogates: vec!["linear".into()],
            mu_split: "test".into(),
        }
    }
}

/// What happened, for the summary line and the exit code.
#[derive(Debug, Default)]
pub struct Report {
    pub runs: usize,
    pub analysed: usize,
    pub skipped: usize,
    /// (file, one-line reason)
    pub failures: Vec<(PathBuf, String)>,
    /// Things worth saying once (an analyzer that did not apply, …).
    pub notes: Vec<String>,
    /// Things the user must not miss that are not failures: aliased
    /// checkpoints (`checkpoints.parquet` has them too).
    pub warnings: Vec<String>,
    /// Checkpoints not analysed because their weights equal an earlier step's.
    pub aliased: usize,
}

/// The registered analyzers named in `names` (all when empty).
pub fn select_analyzers(names: &[String]) -> Result<Vec<Box<dyn Analyzer>>> {
    if names.is_empty() {
        return Ok(analyzers::all_analyzers());
    }
    names
        .iter()
        .map(|n| analyzers::by_name(n).with_context(|| format!("unknown analyzer '{n}' (registered: {})", analyzers::names().join(", "))))
        .collect()
}

/// Analyses every target; a failing checkpoint is reported and the others
/// go on. Errors returned here are set-up errors (bad options).
pub fn analyze(targets: &[Target], opts: &AnalyzeOptions) -> Result<Report> {
    analyze_with(targets, select_analyzers(&opts.analyzers)?, opts)
}

/// [`analyze`] with the given analyzers instead of `opts.analyzers` (for
/// analyzers that are not registered, e.g. a newer version under test).
pub fn analyze_with(targets: &[Target], selected: Vec<Box<dyn Analyzer>>, opts: &AnalyzeOptions) -> Result<Report> {
    if !["test", "probe"].contains(&opts.mu_split.as_str()) {
        bail!("--mu-split must be test or probe, got '{}'", opts.mu_split);
    }
    let sources = opts.surrogates.iter().map(|s| crate::surrogate::Source::parse(s)).collect::<Result<Vec<_>>>()?;
    let dev = device::select(&opts.device)?;
    analyzers::fix_faer_parallelism();
    let mut report = Report::default();
    let mut seen = inventory::Seen::default();
    for target in targets {
        report.runs += 1;
        if let Err(e) = analyze_target(target, &selected, &sources, opts, &dev, &mut seen, &mut report) {
            report.failures.push((target.out_dir.clone(), format!("{e:#}")));
        }
    }
    if seen.shared_step0 > 0 {
        report.notes.push(format!(
            "{} runs start from the same step-0 weights as another run analysed here (expected for runs with the same seed and init; checkpoints.parquet: aliased_with_run)",
            seen.shared_step0
        ));
    }
    Ok(report)
}

struct Job {
    path: PathBuf,
    step: u64,
    analyzers: Vec<usize>,
}

/// What a result of `analyzer` depends on beyond its checkpoint.
fn reference_of(analyzer: &dyn Analyzer, ctx_final: Option<u64>, surrogates: &str) -> Option<String> {
    let needs = analyzer.needs();
    if needs.reference_grams {
        Some(format!("final={}", ctx_final.map_or("none".into(), |s| s.to_string())))
    } else if needs.surrogates {
        Some(surrogates.to_string())
    } else {
        None
    }
}

fn analyze_target(
    target: &Target,
    selected: &[Box<dyn Analyzer>],
    sources: &[crate::surrogate::Source],
    opts: &AnalyzeOptions,
    dev: &candle_core::Device,
    seen: &mut inventory::Seen,
    report: &mut Report,
) -> Result<()> {
    // One analysis per run at a time: a second one is refused, naming the
    // first, rather than both merging rows into the same tables.
    let _lock = crate::lock::acquire(&target.out_dir, "analysis")?;
    let probe_hash = target.probe.hash.clone();
    // --force recomputes the selected analyzers and keeps every other
    // analyzer's rows; only tables that cannot be read are started afresh.
    let loaded = Done::read(&target.out_dir).and_then(|d| Ok((d, rows::Existing::read(&target.out_dir)?)));
    let (mut done, mut existing) = match loaded {
        Ok(v) => v,
        Err(e) if opts.force => {
            report.notes.push(format!("{}: starting its tables afresh (--force): {e:#}", target.run_id));
            (Done::default(), rows::Existing::empty())
        }
        Err(e) => return Err(e),
    };
    if opts.force {
        let names: Vec<&str> = selected.iter().map(|a| a.name()).collect();
        done.entries.retain(|k| !names.contains(&k.analyzer.as_str()));
    }
    let final_step = target.checkpoints.iter().filter_map(|p| target.step_of(p)).max();
    let surrogate_key = format!("{}|{}", opts.surrogates.join(","), opts.mu_split);
    // Every file read once: checked against run.json, its weights hashed.
    let entries = inventory::take(target, seen);
    let foreign: std::collections::BTreeMap<u64, String> = match target.foreign_identity() {
        None => Default::default(),
        Some(identity) => entries
            .iter()
            .filter_map(|e| {
                let w = e.fingerprint.as_ref()?.weights_sha256.as_deref().unwrap_or("unreadable");
                Some((e.step?, crate::checkpoint::sha256_hex(format!("{identity}|{w}").as_bytes())[..16].to_string()))
            })
            .collect(),
    };
    let key = |a: &dyn Analyzer, step: u64| DoneKey {
        step,
        analyzer: a.name().into(),
        version: a.version(),
        probe_hash: probe_hash.clone(),
        reference: reference_of(a, final_step, &surrogate_key),
        source: foreign.get(&step).cloned(),
    };

    inventory::table(&target.run_id, &entries).write(&target.out_dir.join("checkpoints.parquet"))?;
    target.mark_verified(entries.iter().filter(|e| e.analysable()).map(|e| e.path.clone()));
    let mut jobs = Vec::new();
    for e in &entries {
        match e.status {
            inventory::Status::Ok => {}
            inventory::Status::Aliased => {
                report.aliased += 1;
                report.warnings.push(e.problem.clone().unwrap_or_default());
                continue;
            }
            _ => {
                report.failures.push((e.path.clone(), e.problem.clone().unwrap_or_default()));
                continue;
            }
        }
        if let (Some((run, s)), Some(step)) = (&e.aliased_with, e.step) {
            if step == 0 && *s == 0 {
                seen.shared_step0 += 1;
            } else {
                report.warnings.push(format!(
                    "{}: holds the same weights as step {s} of run {run} (checkpoints.parquet: aliased_with_run); analysed, but check that the runs differ as intended",
                    e.path.display()
                ));
            }
        }
        let path = &e.path;
        let Some(step) = e.step else {
            report.failures.push((
                path.clone(),
                "cannot tell the step from the file name (expected digits in the name, e.g. step_00000042.safetensors)".into(),
            ));
            continue;
        };
        let todo: Vec<usize> = (0..selected.len()).filter(|&i| !done.entries.contains(&key(selected[i].as_ref(), step))).collect();
        report.skipped += selected.len() - todo.len();
        if !todo.is_empty() {
            jobs.push(Job { path: path.clone(), step, analyzers: todo });
        }
    }
    if jobs.is_empty() {
        // Nothing new; still refresh the runs row (status may have changed).
        return target.write_runs_table(existing.model());
    }

    let needs = jobs.iter().flat_map(|j| j.analyzers.iter()).fold(Needs::default(), |n, &i| n.union(selected[i].needs()));
    let chunk_size = opts.chunk_size.unwrap_or_else(|| target.default_chunk(needs, dev));
    let opts = &AnalyzeOptions { chunk_size: Some(chunk_size), ..opts.clone() };
    let ctx = match target.captured_layout() {
        Some(layout) => captured::prepare(target, layout, needs, sources, final_step, chunk_size, dev, &mut report.notes)?,
        None => TargetContext::prepare(target, needs, sources, opts, final_step, dev, &mut report.notes)?,
    };

    // Checkpoints go in `lanes` sequential lanes side by side, on the global
    // thread pool: each checkpoint's own parallel work (convolutions, matrix
    // products, reductions) can use every thread, and small models still
    // fill the machine by running several checkpoints at once. A GPU runs
    // one checkpoint at a time unless told otherwise (its work serialises on
    // the device anyway; lanes would only multiply its memory).
    let default_lanes = if dev.is_cpu() { rayon::current_num_threads() } else { 1 };
    let wanted = if opts.jobs > 0 { opts.jobs } else { default_lanes };
    let per_job = target.memory_estimate(chunk_size, needs);
    let lanes = ((opts.max_memory_bytes / per_job.max(1)) as usize).clamp(1, wanted.max(1)).min(jobs.len());
    let bar = if opts.quiet { ProgressBar::hidden() } else { ProgressBar::new(jobs.len() as u64) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} {bar:30} {pos}/{len} checkpoints {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(target.run_id.clone());

    type JobResult = Result<(u64, Vec<(usize, Result<Finished, AnalyzerError>)>)>;
    let results: Vec<(usize, JobResult)> = (0..lanes)
        .into_par_iter()
        .flat_map_iter(|lane| {
            (lane..jobs.len()).step_by(lanes).map(|ji| {
                let r = run_job(target, &jobs[ji], selected, &ctx, chunk_size, dev);
                bar.inc(1);
                (ji, r)
            })
        })
        .collect();
    bar.finish_and_clear();

    let prov = rows::Provenance::of(dev);
    let mut noted = std::collections::BTreeSet::new();
    let mut note = |report: &mut Report, text: String| {
        if noted.insert(text.clone()) {
            report.notes.push(text);
        }
    };
    for (ji, result) in results {
        let job = &jobs[ji];
        match result {
            Err(e) => report.failures.push((job.path.clone(), format!("{e:#}"))),
            Ok((step, outcomes)) => {
                report.analysed += 1;
                let revision = target.checkpoint_name(&job.path);
                for (ai, outcome) in outcomes {
                    let a = selected[ai].as_ref();
                    match outcome {
                        Ok(finished) => {
                            for n in finished.notes {
                                note(report, format!("{}: {}: {n}", target.run_id, a.name()));
                            }
                            existing.replace(step, &revision, a, &finished.values, target, &prov);
                        }
                        Err(AnalyzerError::NotApplicable { message, .. }) => {
                            note(report, format!("{}: {} does not apply: {message}", target.run_id, a.name()));
                            existing.replace(step, &revision, a, &[], target, &prov);
                        }
                        Err(e) => {
                            report.failures.push((job.path.clone(), e.to_string()));
                            continue;
                        }
                    }
                    done.mark(key(a, step));
                }
            }
        }
    }
    existing.write(&target.out_dir)?;
    done.write(&target.out_dir)?;
    target.write_runs_table(existing.model())
}

fn run_job(
    target: &Target,
    job: &Job,
    selected: &[Box<dyn Analyzer>],
    ctx: &TargetContext,
    chunk: usize,
    dev: &candle_core::Device,
) -> Result<(u64, Vec<(usize, Result<Finished, AnalyzerError>)>)> {
    if let Some(layout) = target.captured_layout() {
        // Analyzers that need the model itself report once why not.
        let (runs, refused): (Vec<usize>, Vec<usize>) =
            job.analyzers.iter().partition(|&&i| captured::not_applicable(selected[i].needs()).is_none());
        let subset: Vec<&dyn Analyzer> = runs.iter().map(|&i| selected[i].as_ref()).collect();
        let outcomes =
            if subset.is_empty() { Vec::new() } else { captured::run_job(target, layout, &job.path, job.step, &subset, ctx, chunk, dev)? };
        let mut all: Vec<(usize, Result<Finished, AnalyzerError>)> = runs.into_iter().zip(outcomes).collect();
        for i in refused {
            let a = selected[i].as_ref();
            all.push((i, Err(captured::refused(a, captured::not_applicable(a.needs()).unwrap_or_default()))));
        }
        return Ok((job.step, all));
    }
    let loaded = target.load_checkpoint(&job.path, job.step)?;
    let spec = &loaded.meta.spec;
    if loaded.meta.step != job.step {
        bail!("{}: metadata step {} does not match the file name's step {}", job.path.display(), loaded.meta.step, job.step);
    }
    if spec.input_shape != target.probe.sample_shape {
        bail!(
            "{}: model input shape {:?} does not match the probe's sample shape {:?}",
            job.path.display(),
            spec.input_shape,
            target.probe.sample_shape
        );
    }
    if let Some(&bad) = target.probe.labels.iter().find(|&&y| y < 0 || y as usize >= spec.num_classes) {
        bail!("{}: probe label {bad} is outside the model's {} classes", job.path.display(), spec.num_classes);
    }
    if let Err(e) = spec.check_inputs(&target.probe.inputs) {
        bail!("{}: the probe does not fit the model: {e}", job.path.display());
    }
    if let Some((name, bad)) = loaded.non_finite()? {
        bail!("{}: tensor '{name}' holds {bad} NaN or infinite values (a diverged run?): not analysed", job.path.display());
    }
    let model = loaded.model(dev)?;
    let subset: Vec<&dyn Analyzer> = job.analyzers.iter().map(|&i| selected[i].as_ref()).collect();
    let needs = subset.iter().fold(Needs::default(), |n, a| n.union(a.needs()));
    let weights = if needs.weights { Some(context::layer_weights(spec, &loaded.tensors)?) } else { None };
    let surrogates = if needs.surrogates { ctx.surrogate_predictions(&model, job.step, dev)? } else { Vec::new() };
    let shared = ctx.shared(job.step, weights.as_deref(), &surrogates);
    let outcomes =
        capture::run(&model, spec, &target.probe, &subset, chunk, dev, &shared).with_context(|| format!("{}", job.path.display()))?;
    Ok((job.step, job.analyzers.iter().copied().zip(outcomes).collect()))
}
