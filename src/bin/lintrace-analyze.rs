//! `lintrace-analyze`: reloads checkpoints, pushes the probe through them
//! with taps and writes tidy Parquet tables, computing only what is missing.

use anyhow::Result;
use clap::Parser;
use lintrace::analysis::{self, AnalyzeOptions, External};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "lintrace-analyze", version, about = "Compute per-layer nonlinearity metrics for every checkpoint of one or more runs")]
struct Args {
    /// Run folders, runs roots, or (with --spec/--probe) folders of checkpoints.
    paths: Vec<PathBuf>,
    /// Comma-separated analyzer names (default: all registered).
    #[arg(long, value_delimiter = ',')]
    analyzers: Vec<String>,
    /// auto | cpu | cuda
    #[arg(long, default_value = "auto")]
    device: String,
    /// Recompute rows that already exist.
    #[arg(long)]
    force: bool,
    /// Model spec (JSON) for checkpoints without lintrace metadata.
    #[arg(long, requires = "probe")]
    spec: Option<PathBuf>,
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
    /// Checkpoints analysed at once (default: as many as threads and memory allow).
    #[arg(long, default_value_t = 0)]
    jobs: usize,
    /// Memory bound for concurrent checkpoints, in GiB.
    #[arg(long, default_value_t = 4.0)]
    max_memory_gb: f64,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn main() {
    let args = Args::parse();
    match real_main(&args) {
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
        anyhow::bail!("give at least one run folder or runs root (see --help)");
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
    let external = args.spec.as_ref().map(|spec| External {
        spec: spec.clone(),
        probe: args.probe.clone().expect("clap requires probe"),
        run_id: args.run_id.clone(),
    });
    let (targets, mut failures) = analysis::discover(&args.paths, external.as_ref())?;
    let start = std::time::Instant::now();
    let mut report = analysis::analyze(&targets, &opts)?;
    failures.append(&mut report.failures);
    for note in &report.notes {
        eprintln!("note: {note}");
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
        "analysed {} checkpoints in {} runs ({} analyzer results already present) in {:.1}s; {} failed",
        report.analysed,
        report.runs,
        report.skipped,
        start.elapsed().as_secs_f64(),
        failures.len()
    );
    for t in &targets {
        println!("tables: {}/{{layer_metrics,model_metrics,runs}}.parquet", t.out_dir.display());
    }
    if let Some(t) = targets.first() {
        println!(
            "polars: pl.read_parquet(\"{}/layer_metrics.parquet\").filter(pl.col(\"metric\") == \"nonlinearity\").pivot(on=\"tap\", index=\"step\", values=\"value\")",
            t.out_dir.display()
        );
    }
    Ok(if failures.is_empty() { 0 } else { 1 })
}
