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
    about = "Compute per-layer nonlinearity metrics for every checkpoint of one or more runs",
    after_help = "lintrace-analyze query|plot|report ARGS… runs lintrace-query (SQL over the tables, figures, the HTML report; see lintrace-query --help)."
)]
struct Args {
    /// Run folders, sweep folders, runs roots, run folders with activations
    /// captured in PyTorch (docs/pytorch.md), Hugging Face series, or (with
    /// --spec/--probe) folders of checkpoints.
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
    #[arg(long, requires = "probe", help = format!(
        "Model spec for checkpoints without lintrace metadata (PyTorch's .pt/.pth/.bin/.ckpt or plain safetensors): a spec JSON \
         file, a lintrace run folder (its spec), or a preset with --num-classes and --input: {} (also torchvision:resnetN and \
         resnetN-small; docs/interop.md)",
        lintrace::spec::presets::listed(lintrace::spec::presets::for_foreign_checkpoints)
    ))]
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
    /// Probe batch (safetensors: inputs, labels) for --spec checkpoints, or
    /// token windows (inputs [n, T] token ids, labels [n, T] next tokens)
    /// for Hugging Face checkpoints.
    #[arg(long)]
    probe: Option<PathBuf>,
    /// Hugging Face checkpoints: a probe of token windows from this UTF-8
    /// text, tokenized with the checkpoint's tokenizer.json and stored with
    /// the tables, so that every revision and later re-analysis sees the
    /// same tokens.
    #[arg(long, conflicts_with_all = ["probe", "spec"])]
    probe_text: Option<PathBuf>,
    /// With --probe-text: the tokenizer.json (default: the first revision's).
    #[arg(long, requires = "probe_text")]
    tokenizer: Option<PathBuf>,
    /// With --probe-text: tokens per window [default: 512].
    #[arg(long, requires = "probe_text")]
    context: Option<usize>,
    /// With --probe-text: tokens in the probe, in whole windows [default: 4096].
    #[arg(long, requires = "probe_text")]
    probe_size: Option<usize>,
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
    /// Probe samples per forward pass (a language model's chunks hold whole
    /// windows of about 32 × this many tokens). Default: 256, or fewer on
    /// the CPU where a chunk's recorded values would pass about 3 GiB (a
    /// large language model's windows).
    #[arg(long)]
    chunk_size: Option<usize>,
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

fn main() {
    lintrace::sigpipe::exit_quietly_on_closed_pipe();
    // CPU passes allocate and free activation-sized buffers at every layer:
    // keep freed memory for reuse instead of unmapping it (see the function).
    lintrace::model::ops::tune_malloc_for_training();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(cmd) = argv.get(1).and_then(|a| a.to_str()).filter(|a| QUERY_COMMANDS.contains(a)) {
        std::process::exit(forward_to_query(cmd, &argv[1..]));
    }
    let args = Args::parse();
    if std::env::var_os("LINTRACE_PARSE_ONLY").is_some() {
        return; // the command line parsed; nothing is run (tests/it/docs/doc_commands.rs)
    }
    match real_main(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Subcommands that belong to `lintrace-query`.
const QUERY_COMMANDS: [&str; 3] = ["query", "plot", "report"];

/// Runs `lintrace-query ARGS…` (next to this binary, else on PATH) and
/// returns its exit code; says in one line how to build it when it is not
/// there.
fn forward_to_query(cmd: &str, args: &[std::ffi::OsString]) -> i32 {
    let beside =
        std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join(format!("lintrace-query{}", std::env::consts::EXE_SUFFIX))));
    let program = beside.filter(|p| p.is_file()).map(std::ffi::OsString::from).unwrap_or_else(|| "lintrace-query".into());
    match std::process::Command::new(&program).args(args).status() {
        Ok(status) => status.code().unwrap_or(2),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "error: `lintrace-analyze {cmd}` runs lintrace-query, which is not built here: build it with `cargo build --release -p lintrace-query` (or run `cargo run --release -p lintrace-query -- {cmd} …`)"
            );
            2
        }
        Err(e) => {
            eprintln!("error: could not run {}: {e}", std::path::Path::new(&program).display());
            2
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
    let external = match (&args.spec, &args.probe) {
        (Some(_), None) => anyhow::bail!("--spec needs --probe (the probe batch to push through the checkpoints)"),
        _ => args.spec.as_ref(),
    };
    if args.probe.is_some() && external.is_none() && !paths.iter().all(|p| lintrace::hf::series::is_series(p)) {
        anyhow::bail!("--probe needs --spec, except for Hugging Face checkpoint folders (their config.json is the spec)");
    }
    let hf = analysis::HfProbe {
        probe: args.probe.clone().filter(|_| external.is_none()),
        text: args.probe_text.clone(),
        tokenizer: args.tokenizer.clone(),
        context: args.context,
        tokens: args.probe_size,
        run_id: args.run_id.clone(),
    };
    let external = external.map(|spec| External {
        spec: spec.clone(),
        probe: args.probe.clone().expect("checked above"),
        run_id: args.run_id.clone(),
        num_classes: args.num_classes,
        input: args.input.clone(),
        renames,
        step_from: args.step_from.clone(),
    });
    let (targets, mut failures) = match analysis::discover_with(&paths, external.as_ref(), &hf) {
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
