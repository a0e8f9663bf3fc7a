//! `lintrace-train`: trains one model and writes log-spaced checkpoints, the
//! probe batch, the train log and the run manifest. Flags override the keys
//! of `--config FILE.toml`, which override the defaults.

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser};
use lintrace::device;
use lintrace::train::{self, TrainConfig, TrainOptions};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "lintrace-train",
    version,
    about = "Train a model and write log-spaced safetensors checkpoints",
    args_override_self = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// TOML file with any of the config keys (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, help = format!("The model: one of {}", lintrace::spec::presets::listed(|_| true)))]
    model: Option<String>,
    /// Transformers: model width (default: the preset's).
    #[arg(long)]
    dim: Option<usize>,
    /// Transformers: number of blocks.
    #[arg(long)]
    blocks: Option<usize>,
    /// Transformers: attention heads.
    #[arg(long)]
    heads: Option<usize>,
    /// Transformers: MLP hidden width.
    #[arg(long)]
    mlp_hidden: Option<usize>,
    /// ViT: patch side.
    #[arg(long)]
    patch: Option<usize>,
    /// Transformers: dropout on embeddings, attention weights and sublayer outputs.
    #[arg(long)]
    dropout: Option<f64>,
    /// relu | leaky_relu | gelu | tanh | identity
    #[arg(long)]
    activation: Option<String>,
    #[arg(long)]
    leaky_relu_slope: Option<f64>,
    /// MLP hidden width.
    #[arg(long)]
    width: Option<usize>,
    /// MLP hidden layers.
    #[arg(long)]
    depth: Option<usize>,
    /// CNN conv stack, e.g. "32,64,M,64,M" (M = 2×2 max-pool).
    #[arg(long)]
    conv: Option<String>,
    /// CNN dense widths before the head, e.g. "128".
    #[arg(long)]
    dense: Option<String>,
    #[arg(long)]
    kernel_size: Option<usize>,
    /// CNN: a BatchNorm after every conv (torchvision's VGG-BN layout).
    #[arg(long)]
    batch_norm: bool,
    /// ResNet stem: small (3×3 conv, no max-pool; 32×32 inputs) | imagenet
    /// (torchvision's 7×7/2 conv + max-pool). Default: the preset's.
    #[arg(long)]
    stem: Option<String>,
    /// ResNet shortcut where shapes change: a (zero padding) | b (1×1
    /// projection). Default: the preset's.
    #[arg(long)]
    shortcut: Option<String>,
    /// Taps made linear (identity), e.g. "0,1".
    #[arg(long)]
    linear_taps: Option<String>,
    /// cifar10 | image-folder | idx | digits | gaussian-mixture | sinusoid-2d | modular-addition |
    /// text (a UTF-8 file as --data-dir; without one, the embedded Shakespeare corpus)
    #[arg(long)]
    dataset: Option<String>,
    /// modular-addition: the modulus p (default 113).
    #[arg(long)]
    modulus: Option<usize>,
    /// modular-addition: share of the p² pairs used for training (default 0.3).
    #[arg(long)]
    train_fraction: Option<f64>,
    /// text: tokens per window, the model's context (default: the preset's,
    /// 256 for gpt-char-small, 64 for gpt-char-tiny).
    #[arg(long)]
    context: Option<usize>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep only these classes, e.g. "0,1,2".
    #[arg(long)]
    classes: Option<String>,
    /// Merge classes into groups, e.g. "0-4/5-9".
    #[arg(long)]
    groups: Option<String>,
    /// Skip per-channel normalisation.
    #[arg(long)]
    no_normalize: bool,
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    #[arg(long)]
    data_seed: Option<u64>,
    /// Synthetic datasets: training samples.
    #[arg(long)]
    n_train: Option<usize>,
    /// Synthetic datasets: test samples.
    #[arg(long)]
    n_test: Option<usize>,
    #[arg(long)]
    synthetic_dim: Option<usize>,
    #[arg(long)]
    synthetic_classes: Option<usize>,
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<u64>,
    #[arg(long)]
    epochs: Option<f64>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    /// sgd | momentum | adam | adamw
    #[arg(long)]
    optimizer: Option<String>,
    #[arg(long)]
    momentum: Option<f64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// constant | cosine | warmup | warmup-cosine
    #[arg(long)]
    lr_schedule: Option<String>,
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// Adam/AdamW β₁ (default 0.9).
    #[arg(long)]
    adam_beta1: Option<f64>,
    /// Adam/AdamW β₂ (default 0.999).
    #[arg(long)]
    adam_beta2: Option<f64>,
    /// Clip the global gradient norm (0: off).
    #[arg(long)]
    grad_clip: Option<f64>,
    /// Label smoothing of the training loss (0: off).
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// pytorch | kaiming-normal | xavier | orthogonal | gpt2
    #[arg(long)]
    init: Option<String>,
    #[arg(long)]
    init_scale: Option<f64>,
    /// On a CUDA GPU: TF32 tensor cores for training's f32 matrix products and
    /// convolutions (PyTorch's default for cuDNN convolutions). Not for analysis.
    #[arg(long)]
    tf32: bool,
    /// Random crop and flip (image data).
    #[arg(long)]
    augment: bool,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    probe_size: Option<usize>,
    #[arg(long)]
    probe_seed: Option<u64>,
    #[arg(long)]
    ckpt_per_decade: Option<f64>,
    /// Points per doubling of the step; overrides --ckpt-per-decade.
    #[arg(long)]
    ckpt_per_octave: Option<f64>,
    /// Also checkpoint every N steps.
    #[arg(long)]
    ckpt_every: Option<u64>,
    /// labels | teacher:CHECKPOINT_OR_RUN (train on a teacher's predictions).
    #[arg(long)]
    targets: Option<String>,
    /// Runs root.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run id (default: readable name plus config hash).
    #[arg(long)]
    name: Option<String>,
    /// Replace an existing run with the same id.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Continue an interrupted run of the same config from its last
    /// checkpoint (a finished one is left as it is).
    #[arg(long)]
    resume: bool,
    /// auto | cpu | cuda
    #[arg(long, default_value = "cpu")]
    device: String,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// Print the resolved config as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Expand a sweep file into runs and train them (see docs/sweeps-and-queries.md).
    Sweep(SweepArgs),
}

#[derive(clap::Args, Debug)]
struct SweepArgs {
    /// The sweep's TOML file, or a sweep folder written before (its sweep.json).
    path: PathBuf,
    /// Runs trained at once.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Threads per run (default: the cores divided among the jobs).
    #[arg(long)]
    threads: Option<usize>,
    /// Train only these runs (indices or run ids, comma-separated), in this
    /// process: what a Slurm array task runs.
    #[arg(long)]
    only: Option<String>,
    /// Write job scripts instead of training: `slurm`.
    #[arg(long)]
    emit: Option<String>,
    /// Folder for the sweep (overrides the file's `out`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the runs and their status, train nothing.
    #[arg(long)]
    dry_run: bool,
    /// auto | cpu | cuda
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, short)]
    quiet: bool,
}

fn sweep_main(a: &SweepArgs) -> Result<i32> {
    use lintrace::sweep::{self, local, Sweep};
    let s = Sweep::open(&a.path, a.out.as_deref())?;
    s.write()?;
    if a.dry_run {
        println!("sweep {} → {} ({} runs)", s.name, s.dir.display(), s.runs.len());
        for r in &s.runs {
            println!("{:>4}  {:<12} {}", r.index, local::run_status(&s, r), r.run_id);
        }
        return Ok(0);
    }
    if let Some(what) = &a.emit {
        if what != "slurm" {
            anyhow::bail!("--emit: unknown target '{what}' (expected slurm)");
        }
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        let bin_dir = exe.parent().context("cannot find this program's folder")?;
        let e = sweep::slurm::emit(&s, bin_dir)?;
        println!("wrote {}, {}, {}", e.train.display(), e.analyze.display(), e.collect.display());
        println!("submit with: {}", e.submit.display());
        return Ok(0);
    }
    if let Some(only) = &a.only {
        let runs = s.select(only)?;
        sweep::train_in_process(&s, &runs, &device::select(&a.device)?, a.quiet)?;
        return Ok(0);
    }
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let runs: Vec<_> = s.runs.iter().collect();
    let opts = local::LocalOptions { jobs: a.jobs, threads: a.threads, device: a.device.clone(), quiet: a.quiet };
    let outcomes = local::run(&s, &runs, &opts, &exe)?;
    let failed: Vec<_> = outcomes.iter().filter(|(_, o)| matches!(o, local::Outcome::Failed { .. })).collect();
    let fresh = outcomes.iter().filter(|(_, o)| matches!(o, local::Outcome::Finished { .. })).count();
    println!(
        "sweep {}: {} runs, {} trained now, {} finished before, {} failed → {}",
        s.name,
        outcomes.len(),
        fresh,
        outcomes.len() - fresh - failed.len(),
        failed.len(),
        s.dir.display()
    );
    for (id, o) in &failed {
        if let local::Outcome::Failed { message, log } = o {
            eprintln!("error: {id}: {message} (log: {})", log.display());
        }
    }
    Ok(if failed.is_empty() { 0 } else { 1 })
}

/// Flags that steer this process rather than set a config key.
const PROCESS_FLAGS: &[&str] = &["config", "overwrite", "resume", "device", "quiet", "print_config"];

/// A flag's text as its key reads it: the spellings these flags have
/// always accepted beside the config file's (`kaiming_normal`, `A`).
fn spelling(key: &str, raw: &str) -> String {
    match key {
        "init" => raw.replace('_', "-"),
        "shortcut" => raw.to_lowercase(),
        _ => raw.to_string(),
    }
}

/// The config key a flag sets, and with which value when it takes none.
fn flag_key(id: &str) -> (&str, Option<bool>) {
    match id {
        // A flag can only switch on; normalisation is on by default.
        "no_normalize" => ("normalize", Some(false)),
        "batch_norm" | "tf32" | "augment" => (id, Some(true)),
        _ => (id, None),
    }
}

/// A flag's text as a TOML value of the type its key has in `example`
/// (numbers, comma-separated lists, or text).
fn flag_value(flag: &str, raw: &str, example: &serde_json::Value) -> Result<toml::Value> {
    let item = |x: &str| x.parse::<i64>().map(toml::Value::Integer).unwrap_or_else(|_| toml::Value::String(x.to_string()));
    Ok(match example {
        serde_json::Value::Number(n) if n.is_f64() => {
            toml::Value::Float(raw.trim().parse().map_err(|_| anyhow::anyhow!("--{flag}: '{raw}' is not a number"))?)
        }
        serde_json::Value::Number(_) => {
            toml::Value::Integer(raw.trim().parse().map_err(|_| anyhow::anyhow!("--{flag}: '{raw}' is not a whole number"))?)
        }
        serde_json::Value::Array(_) => toml::Value::Array(raw.split(',').map(str::trim).filter(|x| !x.is_empty()).map(item).collect()),
        _ => toml::Value::String(raw.to_string()),
    })
}

/// The config: the defaults, overlaid by `--config FILE`, overlaid by every
/// flag given on the command line. A flag sets the config key of its own
/// name, read as that key's type, through the same checks as a config
/// file's keys; a new key needs only its flag.
fn resolve(a: &Args, m: &clap::ArgMatches) -> Result<TrainConfig> {
    let mut table = match &a.config {
        Some(p) => TrainConfig::table_from_file(p)?,
        None => toml::Table::new(),
    };
    let example = TrainConfig::example();
    let cmd = Args::command();
    for id in cmd.get_arguments().map(|arg| arg.get_id().as_str()) {
        if PROCESS_FLAGS.contains(&id) || m.value_source(id) != Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        let (key, switch) = flag_key(id);
        let flag = id.replace('_', "-");
        let value = match switch {
            Some(on) => toml::Value::Boolean(on),
            None => {
                let raw = m.get_raw(id).and_then(|mut v| v.next()).and_then(|v| v.to_str()).context(format!("--{flag}: not UTF-8"))?;
                let kind = example.get(key).with_context(|| format!("--{flag}: no config key '{key}'"))?;
                flag_value(&flag, &spelling(key, raw), kind)?
            }
        };
        table.insert(key.to_string(), value);
    }
    if m.value_source("epochs") == Some(clap::parser::ValueSource::CommandLine) {
        // --epochs counts over a file's `steps` (0 means "use epochs").
        table.insert("steps".into(), toml::Value::Integer(0));
    }
    let c = TrainConfig::from_table(table)?;
    c.check()?;
    Ok(c)
}

fn main() {
    lintrace::sigpipe::exit_quietly_on_closed_pipe();
    // CPU passes allocate and free activation-sized buffers at every layer:
    // keep freed memory for reuse instead of unmapping it (see the function).
    lintrace::model::ops::tune_malloc_for_training();
    let matches = Args::command().get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if std::env::var_os("LINTRACE_PARSE_ONLY").is_some() {
        return; // the command line parsed; nothing is run (tests/it/docs/doc_commands.rs)
    }
    let result = match &args.command {
        Some(Cmd::Sweep(s)) => sweep_main(s),
        None => real_main(&args, &matches).map(|()| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            // A diverged run is a result, not a crash: its own exit status.
            std::process::exit(if e.downcast_ref::<train::Diverged>().is_some() { EXIT_DIVERGED } else { 1 });
        }
    }
}

/// Exit status of a run whose loss stopped being finite (run.json says
/// `diverged`, with the step).
const EXIT_DIVERGED: i32 = 3;

fn real_main(args: &Args, matches: &clap::ArgMatches) -> Result<()> {
    let cfg = resolve(args, matches)?;
    if args.print_config {
        print!("{}", toml::to_string(&cfg).context("cannot render config")?);
        return Ok(());
    }
    let opts = TrainOptions { overwrite: args.overwrite, resume: args.resume, quiet: args.quiet, device: device::select(&args.device)? };
    let start = std::time::Instant::now();
    let dir = train::train(&cfg, &opts)?;
    let manifest = lintrace::run::RunManifest::read(&dir)?;
    println!(
        "trained {} ({} steps, {} checkpoints) in {:.1}s → {}",
        manifest.run_id,
        manifest.total_steps,
        manifest.checkpoint_steps.len(),
        start.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lintrace::spec::ConvItem;

    /// Every flag sets a config key of its type or steers the process:
    /// a flag added without its key, or a key renamed, fails here.
    #[test]
    fn every_flag_is_a_config_key_or_a_process_flag() {
        let example = TrainConfig::example();
        let cmd = Args::command();
        let ids: Vec<&str> = cmd.get_arguments().map(|a| a.get_id().as_str()).filter(|id| !matches!(*id, "help" | "version")).collect();
        assert!(ids.len() > 40, "{ids:?}");
        for id in ids {
            if PROCESS_FLAGS.contains(&id) {
                continue;
            }
            let (key, switch) = flag_key(id);
            let kind = example.get(key).unwrap_or_else(|| panic!("--{id} sets no config key"));
            assert_eq!(switch.is_some(), kind.is_boolean(), "--{id}: a switch exactly when its key is true/false");
        }
    }

    fn resolved(args: &[&str]) -> Result<TrainConfig> {
        let m = Args::command().try_get_matches_from(std::iter::once("lintrace-train").chain(args.iter().copied()))?;
        resolve(&Args::from_arg_matches(&m)?, &m)
    }

    #[test]
    fn flags_set_their_keys_with_their_types() {
        let c = resolved(&[
            "--model",
            "cnn",
            "--conv",
            "8,M,16",
            "--dense",
            "32,16",
            "--lr",
            "0.1",
            "--epochs",
            "3",
            "--no-normalize",
            "--batch-norm",
            "--optimizer",
            "adamw",
            "--lr-schedule",
            "warmup-cosine",
            "--classes",
            "0,2",
            "--data-dir",
            "some/where",
            "--adam-beta2",
            "0.98",
        ])
        .unwrap();
        assert_eq!(c.conv, vec![ConvItem::Conv(8), ConvItem::Pool(lintrace::spec::PoolMarker::M), ConvItem::Conv(16)]);
        assert_eq!((c.dense.clone(), c.lr, c.epochs, c.steps), (vec![32, 16], 0.1, 3.0, 0));
        assert!(!c.data.normalize && c.batch_norm);
        assert_eq!(c.optimizer, lintrace::train::optim::OptimizerKind::Adamw);
        assert_eq!(c.lr_schedule, lintrace::train::schedule::Schedule::WarmupCosine);
        assert_eq!((c.data.classes.clone(), c.data.data_dir.clone()), (Some(vec![0, 2]), Some(PathBuf::from("some/where"))));
        assert_eq!(c.adam_beta2, Some(0.98));
        let c = resolved(&["--model", "resnet20", "--shortcut", "B", "--init", "kaiming_normal"]).unwrap();
        assert_eq!((c.shortcut, c.init), (Some(lintrace::spec::Shortcut::B), lintrace::init::InitScheme::KaimingNormal));
        // Untouched keys keep their defaults.
        assert_eq!(c.batch_size, TrainConfig::default().batch_size);
    }

    #[test]
    fn bad_flag_values_name_the_flag_or_key() {
        // (clap checks the flags typed as numbers before they reach a key.)
        assert!(resolved(&["--lr", "fast"]).unwrap_err().to_string().contains("--lr"));
        assert_eq!(flag_value("lr", "fast", &serde_json::json!(0.5)).unwrap_err().to_string(), "--lr: 'fast' is not a number");
        assert_eq!(flag_value("steps", "1.5", &serde_json::json!(1)).unwrap_err().to_string(), "--steps: '1.5' is not a whole number");
        let e = format!("{:#}", resolved(&["--optimizer", "lion"]).unwrap_err());
        assert!(e.contains("optimizer") && e.contains("lion"), "{e}");
        let e = format!("{:#}", resolved(&["--momentum", "0.5", "--optimizer", "adam"]).unwrap_err());
        assert!(e.contains("momentum applies to optimizer"), "{e}");
    }
}
