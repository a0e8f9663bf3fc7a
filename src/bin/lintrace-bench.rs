//! `lintrace-bench`: the numbers in BENCHMARKS.md.
//!
//! 1. Trainer throughput (images/s) on the default CNN at batch 128, on
//!    CIFAR-10 (the real trainer, timed from its own train log after a
//!    warm-up, so data loading and step-0 checkpointing are excluded).
//! 2. Analyzer seconds per checkpoint on a 2,048-sample probe: all
//!    analyzers together, then each alone (one checkpoint at a time).

use anyhow::{Context, Result};
use clap::Parser;
use lintrace::analysis::{self, AnalyzeOptions};
use lintrace::tables::Table;
use lintrace::train::{self, TrainConfig, TrainOptions};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "lintrace-bench", about = "Measure trainer and analyzer speed")]
struct Args {
    /// CIFAR-10 as an image-folder tree or .tar.gz.
    #[arg(long, default_value = "../shared/data/cifar10-jpeg.tar.gz")]
    data_dir: PathBuf,
    /// Training steps to time (after 3 warm-up steps).
    #[arg(long, default_value_t = 30)]
    steps: u64,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 2048)]
    probe_size: usize,
    /// Where the benchmark runs are written (removed first).
    #[arg(long, default_value = "target/bench-runs")]
    out: PathBuf,
}

fn main() {
    if let Err(e) = real_main(&Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(args: &Args) -> Result<()> {
    let _ = std::fs::remove_dir_all(&args.out);
    let mut cfg = TrainConfig::default();
    cfg.data.dataset = "image-folder".into();
    cfg.data.data_dir = Some(args.data_dir.clone());
    cfg.steps = args.steps + 3;
    cfg.batch_size = args.batch_size;
    cfg.probe_size = args.probe_size;
    cfg.ckpt_per_decade = 0.0;
    cfg.out = args.out.clone();
    cfg.name = "bench".into();
    let t = Instant::now();
    let dir = train::train(&cfg, &TrainOptions { overwrite: true, resume: false, quiet: true, device: candle_core::Device::Cpu })?;
    let total = t.elapsed().as_secs_f64();
    let log = Table::read(&dir.join("train_log.parquet"), "train_log")?;
    let (wi, si) = (log.column_index("wall_seconds").context("wall")?, log.column_index("samples_seen").context("samples")?);
    let at = |row: usize| (log.rows[row][wi].as_f64().unwrap_or(0.0), log.rows[row][si].as_i64().unwrap_or(0) as f64);
    let (w0, s0) = at(2);
    let (w1, s1) = at(log.rows.len() - 1);
    println!("threads: {}", rayon::current_num_threads());
    println!(
        "train: default CNN, batch {}, {} timed steps: {:.1} images/s (whole command incl. data load: {:.1}s)",
        args.batch_size,
        args.steps,
        (s1 - s0) / (w1 - w0),
        total
    );

    let targets = analysis::discover(std::slice::from_ref(&dir), None)?.0;
    let ckpts = targets[0].checkpoints.len();
    let mut opts = AnalyzeOptions { force: true, quiet: true, jobs: 1, device: "cpu".into(), ..AnalyzeOptions::default() };
    // The linear surrogate is fitted once per dataset and cached; time that
    // apart from the per-checkpoint cost.
    opts.analyzers = vec!["mu".into()];
    let t = Instant::now();
    analysis::analyze(&targets, &opts)?;
    println!("analyze: mu, first run (fits or loads the cached linear surrogate): {:.2} s in all", t.elapsed().as_secs_f64());
    opts.analyzers = Vec::new();
    let t = Instant::now();
    analysis::analyze(&targets, &opts)?;
    println!(
        "analyze: all analyzers, probe {}: {:.2} s/checkpoint ({ckpts} checkpoints)",
        args.probe_size,
        t.elapsed().as_secs_f64() / ckpts as f64
    );
    for a in analyzers::all_analyzers() {
        opts.analyzers = vec![a.name().to_string()];
        let t = Instant::now();
        analysis::analyze(&targets, &opts)?;
        println!("analyze: {} alone: {:.2} s/checkpoint", a.name(), t.elapsed().as_secs_f64() / ckpts as f64);
    }
    Ok(())
}
