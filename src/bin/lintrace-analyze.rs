//! `lintrace-analyze`: reloads checkpoints, pushes the probe through them
//! with taps and writes tidy Parquet tables, computing only what is missing.

use anyhow::Result;
use clap::Parser;
use lintrace::analysis::{self, AnalyzeOptions, External};
use lintrace::sweep::Sweep;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "lintrace-analyze",
    version,
    about = "Compute per-layer nonlinearity metrics for every checkpoint of one or more runs; query, plot and report them",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Run folders, sweep folders, runs roots, or (with --spec/--probe)
    /// folders of checkpoints.
    paths: Vec<PathBuf>,
    /// Sweep folders: analyse only these runs (indices or run ids,
    /// comma-separated), as a Slurm array task does.
    #[arg(long)]
    only: Option<String>,
    /// Sweep folders: only (re)write the sweep's runs.parquet.
    #[arg(long, conflicts_with = "only")]
    collect: bool,
    /// Comma-separated analyzer names (default: all registered).
    #[arg(long, value_delimiter = ',')]
    analyzers: Vec<String>,
    /// auto | cpu | cuda
    #[arg(long, default_value = "auto")]
    device: String,
    /// Recompute rows that already exist.
    #[arg(long)]
    force: bool,
    /// Model spec for checkpoints without lintrace metadata (PyTorch's
    /// .pt/.pth/.bin/.ckpt or plain safetensors): a spec JSON file, a lintrace
    /// run folder (its spec), or a preset (mlp, cnn) with --num-classes and --input.
    #[arg(long, requires = "probe")]
    spec: Option<String>,
    /// Preset specs: number of classes.
    #[arg(long)]
    num_classes: Option<usize>,
    /// Preset specs: input shape, e.g. 3,32,32.
    #[arg(long, value_delimiter = ',')]
    input: Option<Vec<usize>>,
    /// Map tensor-name prefixes of checkpoints from elsewhere, FROM=TO
    /// (repeatable); wrappers such as module. and _orig_mod. are stripped anyway.
    #[arg(long = "rename")]
    renames: Vec<String>,
    /// Regex giving the step of each checkpoint from its path relative to the
    /// folder (first group, or the whole match). Default: the digits after
    /// "step", else the last digits (step_1000, epoch=3-step=1200.ckpt, checkpoint-500/).
    #[arg(long)]
    step_from: Option<String>,
    /// Probe batch (safetensors: inputs, labels) for --spec checkpoints.
    #[arg(long, requires = "spec")]
    probe: Option<PathBuf>,
    /// Run id for --spec checkpoints (default: the folder name).
    #[arg(long)]
    run_id: Option<String>,
    /// Surrogate for `mu` (repeatable): `linear`, a run folder (its final
    /// checkpoint), `RUN@same` (its checkpoint at F's step) or a checkpoint file.
    #[arg(long = "surrogate", default_value = "linear")]
    surrogates: Vec<String>,
    /// Where `mu` compares predictions: test (the run's held-out split) or probe.
    #[arg(long, default_value = "test")]
    mu_split: String,
    /// List the registered analyzers and their metrics.
    #[arg(long)]
    list: bool,
    /// Probe samples per forward pass.
    #[arg(long, default_value_t = 256)]
    chunk_size: usize,
    /// Checkpoints analysed at once (default: on the CPU as many as threads
    /// and memory allow, each still using every thread; on a GPU one).
    #[arg(long, default_value_t = 0)]
    jobs: usize,
    /// Memory bound for concurrent checkpoints, in GiB.
    #[arg(long, default_value_t = 4.0)]
    max_memory_gb: f64,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Run polars SQL over the tables of a sweep, runs root or run
    /// (checkpoints, layer_metrics, model_metrics, runs, train_log).
    Query {
        dir: PathBuf,
        sql: String,
        /// Write the result to a .csv or .parquet file instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Query tables computed on different probe batches together.
        #[arg(long)]
        allow_mixed_probes: bool,
    },
    /// Draw a figure to OUT.png and OUT.svg.
    Plot {
        #[command(subcommand)]
        figure: Figure,
    },
    /// Write a self-contained HTML report (figures and tables) for a folder.
    Report {
        dir: PathBuf,
        /// Default: DIR/report.html
        #[arg(long)]
        out: Option<PathBuf>,
        /// Show tables computed on different probe batches together.
        #[arg(long)]
        allow_mixed_probes: bool,
    },
}

/// What every figure takes: the folder, the metric and where to write.
#[derive(clap::Args, Debug)]
struct FigureArgs {
    /// A sweep folder, runs root or run folder.
    dir: PathBuf,
    #[arg(long)]
    metric: String,
    /// Needed when several analyzers write the metric.
    #[arg(long)]
    analyzer: Option<String>,
    /// Output path without extension (OUT.png and OUT.svg are written).
    #[arg(long)]
    out: PathBuf,
    /// Draw tables computed on different probe batches together.
    #[arg(long)]
    allow_mixed_probes: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Figure {
    /// Depth × log-step heatmap of a layer metric for one run.
    Heatmap {
        #[command(flatten)]
        args: FigureArgs,
        /// The run (when DIR holds several).
        #[arg(long)]
        run: Option<String>,
    },
    /// A grid of heatmaps: one panel per run, or per value of a config key.
    Facet {
        #[command(flatten)]
        args: FigureArgs,
        /// Config key to facet by (e.g. lr); runs sharing a value are averaged.
        #[arg(long)]
        by: Option<String>,
    },
    /// A model metric over log steps: one line per run or per value of a config key.
    Lines {
        #[command(flatten)]
        args: FigureArgs,
        /// Only rows against this surrogate (default: a line per surrogate).
        #[arg(long)]
        surrogate: Option<String>,
        /// Config key to group runs by (e.g. lr); runs sharing a value are averaged.
        #[arg(long)]
        by: Option<String>,
    },
}

fn command_main(cmd: &Cmd) -> Result<i32> {
    use lintrace::plot::{self, data::Tables, figures};
    match cmd {
        Cmd::Query { dir, sql, out, allow_mixed_probes } => {
            let mut df = lintrace::query::run(dir, sql, *allow_mixed_probes)?;
            match out {
                Some(path) => {
                    lintrace::query::write(&mut df, path)?;
                    println!("wrote {} rows to {}", df.height(), path.display());
                }
                None => {
                    // Show whole results unless the user set polars' own limits.
                    for (k, v) in [("POLARS_FMT_MAX_ROWS", "50"), ("POLARS_FMT_MAX_COLS", "30"), ("POLARS_FMT_STR_LEN", "60")] {
                        if std::env::var_os(k).is_none() {
                            std::env::set_var(k, v);
                        }
                    }
                    println!("{df}");
                }
            }
        }
        Cmd::Plot { figure } => {
            let (png, svg) = match figure {
                Figure::Heatmap { args: a, run } => plot::save(
                    &figures::heatmap(&Tables::load(&a.dir, a.allow_mixed_probes)?, run.as_deref(), &a.metric, a.analyzer.as_deref())?,
                    &a.out,
                )?,
                Figure::Facet { args: a, by } => plot::save(
                    &figures::facet(&Tables::load(&a.dir, a.allow_mixed_probes)?, &a.metric, a.analyzer.as_deref(), by.as_deref())?,
                    &a.out,
                )?,
                Figure::Lines { args: a, surrogate, by } => plot::save(
                    &figures::lines(
                        &Tables::load(&a.dir, a.allow_mixed_probes)?,
                        &a.metric,
                        a.analyzer.as_deref(),
                        surrogate.as_deref(),
                        by.as_deref(),
                    )?,
                    &a.out,
                )?,
            };
            println!("wrote {} and {}", png.display(), svg.display());
        }
        Cmd::Report { dir, out, allow_mixed_probes } => {
            let out = out.clone().unwrap_or_else(|| dir.join("report.html"));
            let n = lintrace::report::write(dir, &out, *allow_mixed_probes)?;
            println!("wrote {} ({n} figures)", out.display());
        }
    }
    Ok(0)
}

fn main() {
    // CPU passes allocate and free activation-sized buffers at every layer:
    // keep freed memory for reuse instead of unmapping it (see the function).
    lintrace::model::conv_cpu::tune_malloc_for_training();
    let args = Args::parse();
    let result = match &args.command {
        Some(cmd) => command_main(cmd),
        None => real_main(&args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn real_main(args: &Args) -> Result<i32> {
    if args.list {
        for a in analyzers::all_analyzers() {
            println!("{} v{}: {}", a.name(), a.version(), a.description());
            println!("    metrics: {}", a.metrics().join(", "));
        }
        return Ok(0);
    }
    if args.paths.is_empty() {
        anyhow::bail!("give at least one run folder, sweep folder or runs root (see --help)");
    }
    let sweeps: Vec<Sweep> = args.paths.iter().filter(|p| Sweep::is_sweep_dir(p)).map(|p| Sweep::load(p)).collect::<Result<_>>()?;
    if (args.only.is_some() || args.collect) && (sweeps.len() != 1 || args.paths.len() != 1) {
        anyhow::bail!("--only and --collect take one sweep folder");
    }
    if args.collect {
        let path = analysis::runs_table::write_sweep_table(&sweeps[0])?;
        println!("wrote {}", path.display());
        return Ok(0);
    }
    // A sweep's runs are its subfolders; --only narrows them to some.
    let paths: Vec<PathBuf> = match (&args.only, sweeps.first()) {
        (Some(only), Some(s)) => s.select(only)?.into_iter().map(|r| s.run_dir(r)).collect(),
        _ => args.paths.clone(),
    };
    for p in &paths {
        if !p.exists() && args.only.is_some() {
            anyhow::bail!("{}: this run has not been trained yet", p.display());
        }
    }
    let opts = AnalyzeOptions {
        analyzers: args.analyzers.clone(),
        device: args.device.clone(),
        force: args.force,
        chunk_size: args.chunk_size,
        max_memory_bytes: (args.max_memory_gb * (1u64 << 30) as f64) as u64,
        jobs: args.jobs,
        quiet: args.quiet,
        surrogates: args.surrogates.clone(),
        mu_split: args.mu_split.clone(),
    };
    // Validate analyzer names before touching any run.
    analysis::select_analyzers(&opts.analyzers)?;
    let renames = args
        .renames
        .iter()
        .map(|r| {
            r.split_once('=').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| anyhow::anyhow!("--rename {r}: expected FROM=TO"))
        })
        .collect::<Result<Vec<_>>>()?;
    let external = args.spec.as_ref().map(|spec| External {
        spec: spec.clone(),
        probe: args.probe.clone().expect("clap requires probe"),
        run_id: args.run_id.clone(),
        num_classes: args.num_classes,
        input: args.input.clone(),
        renames,
        step_from: args.step_from.clone(),
    });
    let (targets, mut failures) = match analysis::discover(&paths, external.as_ref()) {
        Ok(v) => v,
        // A sweep with nothing trained yet still gets its (pending) table.
        Err(_) if !sweeps.is_empty() && args.only.is_none() && sweeps.iter().all(|s| s.runs.iter().all(|r| !s.run_dir(r).exists())) => {
            (Vec::new(), Vec::new())
        }
        Err(e) => return Err(e),
    };
    let start = std::time::Instant::now();
    let mut report = analysis::analyze(&targets, &opts)?;
    failures.append(&mut report.failures);
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    for (path, why) in &failures {
        // `why` usually starts with the path already; avoid saying it twice.
        let p = path.display().to_string();
        if why.starts_with(&p) {
            eprintln!("error: {why}");
        } else {
            eprintln!("error: {p}: {why}");
        }
    }
    println!(
        "analysed {} checkpoints in {} runs ({} analyzer results already present) in {:.1}s; {} failed{}",
        report.analysed,
        report.runs,
        report.skipped,
        start.elapsed().as_secs_f64(),
        failures.len(),
        if report.aliased > 0 {
            format!("; {} aliased (same weights as an earlier step), not analysed", report.aliased)
        } else {
            String::new()
        }
    );
    if args.only.is_none() {
        for s in &sweeps {
            match analysis::runs_table::write_sweep_table(s) {
                Ok(p) => println!("sweep table: {}", p.display()),
                Err(e) => failures.push((s.dir.clone(), format!("{e:#}"))),
            }
        }
    }
    if targets.len() <= 3 {
        for t in &targets {
            println!("tables: {}/{{layer_metrics,model_metrics,runs,checkpoints}}.parquet", t.out_dir.display());
        }
    }
    if let Some(t) = targets.first() {
        println!(
            "polars: pl.read_parquet(\"{}/layer_metrics.parquet\").filter(pl.col(\"metric\") == \"nonlinearity\").pivot(on=\"tap\", index=\"step\", values=\"value\")",
            t.out_dir.display()
        );
    }
    Ok(if failures.is_empty() { 0 } else { 1 })
}
