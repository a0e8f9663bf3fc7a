//! `lintrace-train`: trains one model and writes log-spaced checkpoints, the
//! probe batch, the train log and the run manifest. Flags override the keys
//! of `--config FILE.toml`, which override the defaults.

use anyhow::{Context, Result};
use clap::Parser;
use lintrace::device;
use lintrace::init::InitScheme;
use lintrace::spec::ConvItem;
use lintrace::train::{self, optim::OptimizerKind, schedule::Schedule, TrainConfig, TrainOptions};
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
    /// mlp | cnn | resnet20 | resnet32 | resnet56 | resnet18 | resnet34 |
    /// resnet50 | vgg11[_bn] | vgg13[_bn] | vgg16[_bn] | vit-tiny | vit-mini | modadd | gpt-char-small | gpt-char-tiny
    #[arg(long)]
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

fn list<T: std::str::FromStr>(what: &str, s: &str) -> Result<Vec<T>> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| x.parse::<T>().map_err(|_| anyhow::anyhow!("--{what}: '{x}' is not valid")))
        .collect()
}

fn resolve(a: &Args) -> Result<TrainConfig> {
    let mut c = match &a.config {
        Some(p) => TrainConfig::from_toml_file(p)?,
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($($field:ident).+ = $value:expr) => {
            if let Some(v) = $value {
                c.$($field).+ = v;
            }
        };
    }
    set!(model = a.model.clone());
    set!(activation = a.activation.clone());
    set!(leaky_relu_slope = a.leaky_relu_slope);
    set!(width = a.width);
    set!(depth = a.depth);
    if let Some(s) = &a.conv {
        c.conv = s
            .split(',')
            .map(str::trim)
            .map(|x| match x {
                "M" | "m" => Ok(ConvItem::Pool(lintrace::spec::PoolMarker::M)),
                n => n.parse().map(ConvItem::Conv).map_err(|_| anyhow::anyhow!("--conv: '{n}' is neither a channel count nor M")),
            })
            .collect::<Result<_>>()?;
    }
    if let Some(s) = &a.dense {
        c.dense = list("dense", s)?;
    }
    set!(kernel_size = a.kernel_size);
    set!(batch_norm = a.batch_norm.then_some(true));
    if let Some(s) = &a.stem {
        c.stem = Some(
            serde_json::from_value(serde_json::Value::String(s.clone()))
                .map_err(|_| anyhow::anyhow!("--stem: '{s}' is neither small nor imagenet"))?,
        );
    }
    if let Some(s) = &a.shortcut {
        c.shortcut = Some(
            serde_json::from_value(serde_json::Value::String(s.to_lowercase()))
                .map_err(|_| anyhow::anyhow!("--shortcut: '{s}' is neither a nor b"))?,
        );
    }
    if let Some(s) = &a.linear_taps {
        c.linear_taps = list("linear-taps", s)?;
    }
    for (field, value) in [
        (&mut c.dim, a.dim),
        (&mut c.blocks, a.blocks),
        (&mut c.heads, a.heads),
        (&mut c.mlp_hidden, a.mlp_hidden),
        (&mut c.patch, a.patch),
    ] {
        if value.is_some() {
            *field = value;
        }
    }
    set!(dropout = a.dropout);
    if a.modulus.is_some() {
        c.data.modulus = a.modulus;
    }
    if a.context.is_some() {
        c.data.context = a.context;
    }
    if a.train_fraction.is_some() {
        c.data.train_fraction = a.train_fraction;
    }
    set!(data.dataset = a.dataset.clone());
    if a.data_dir.is_some() {
        c.data.data_dir = a.data_dir.clone();
    }
    if let Some(s) = &a.classes {
        c.data.classes = Some(list("classes", s)?);
    }
    if a.groups.is_some() {
        c.data.groups = a.groups.clone();
    }
    if a.no_normalize {
        c.data.normalize = false;
    }
    if a.cache_dir.is_some() {
        c.data.cache_dir = a.cache_dir.clone();
    }
    set!(data.data_seed = a.data_seed);
    set!(data.n_train = a.n_train);
    set!(data.n_test = a.n_test);
    set!(data.synthetic_dim = a.synthetic_dim);
    set!(data.synthetic_classes = a.synthetic_classes);
    if let Some(s) = a.steps {
        c.steps = s;
    }
    if let Some(e) = a.epochs {
        c.epochs = e;
        c.steps = 0;
    }
    set!(batch_size = a.batch_size);
    set!(lr = a.lr);
    if let Some(s) = &a.optimizer {
        c.optimizer = OptimizerKind::parse(s)?;
    }
    set!(momentum = a.momentum);
    if a.momentum.is_some() {
        c.check_momentum_applies()?;
    }
    set!(weight_decay = a.weight_decay);
    if let Some(s) = &a.lr_schedule {
        c.lr_schedule = Schedule::parse(s)?;
    }
    set!(warmup_steps = a.warmup_steps);
    if a.adam_beta1.is_some() {
        c.adam_beta1 = a.adam_beta1;
    }
    if a.adam_beta2.is_some() {
        c.adam_beta2 = a.adam_beta2;
    }
    set!(grad_clip = a.grad_clip);
    set!(label_smoothing = a.label_smoothing);
    if let Some(s) = &a.init {
        c.init = InitScheme::parse(s)?;
    }
    set!(init_scale = a.init_scale);
    if a.tf32 {
        c.tf32 = true;
    }
    if a.augment {
        c.augment = true;
    }
    set!(seed = a.seed);
    set!(probe_size = a.probe_size);
    set!(probe_seed = a.probe_seed);
    set!(ckpt_per_decade = a.ckpt_per_decade);
    set!(ckpt_per_octave = a.ckpt_per_octave);
    set!(ckpt_every = a.ckpt_every);
    set!(targets = a.targets.clone());
    set!(out = a.out.clone());
    set!(name = a.name.clone());
    c.check()?;
    Ok(c)
}

fn main() {
    lintrace::sigpipe::exit_quietly_on_closed_pipe();
    // CPU passes allocate and free activation-sized buffers at every layer:
    // keep freed memory for reuse instead of unmapping it (see the function).
    lintrace::model::ops::tune_malloc_for_training();
    let args = Args::parse();
    if std::env::var_os("LINTRACE_PARSE_ONLY").is_some() {
        return; // the command line parsed; nothing is run (tests/it/docs/doc_commands.rs)
    }
    let result = match &args.command {
        Some(Cmd::Sweep(s)) => sweep_main(s),
        None => real_main(&args).map(|()| 0),
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

fn real_main(args: &Args) -> Result<()> {
    let cfg = resolve(args)?;
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
