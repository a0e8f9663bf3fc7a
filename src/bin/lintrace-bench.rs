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
    /// CIFAR-10 as an image-folder tree or .tar.gz (default: $LINTRACE_CIFAR10).
    #[arg(long)]
    data_dir: Option<PathBuf>,
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
    /// cpu | cuda | auto: where training and analysis run.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The model: cnn (lintrace's default CNN), a ResNet preset (resnet20,
    /// resnet18, ...), a ViT preset (vit-mini, vit-tiny) or a character-level
    /// GPT (gpt-char-small, gpt-char-tiny: the embedded corpus, AdamW,
    /// rates in tokens/s).
    #[arg(long, default_value = "cnn")]
    model: String,
    /// The taps' nonlinearity (a ViT's MLP: gelu).
    #[arg(long, default_value = "relu")]
    activation: String,
    /// ResNet stem: small | imagenet (default: the preset's).
    #[arg(long)]
    stem: Option<String>,
    /// Time training and forward passes only (no analysis).
    #[arg(long)]
    no_analysis: bool,
    /// Train with TF32 matrix products on a CUDA GPU (lintrace-train --tf32).
    #[arg(long)]
    tf32: bool,
    /// Skip the per-analyzer timings (all analyzers together only).
    #[arg(long)]
    no_per_analyzer: bool,
    /// Only time the dominant kernels (convolution forward and backward of
    /// the default CNN's layers, f64 Gram accumulation) in GFLOP/s.
    #[arg(long)]
    kernels: bool,
    /// Only split a training step of the default CNN (synthetic batch
    /// already on the device, momentum SGD) into forward + loss, backward
    /// and update, each timed to a device synchronisation, and time whole
    /// steps with one synchronisation at the end (as PyTorch's peer does).
    #[arg(long)]
    phases: bool,
    /// Only time the forward pass of a Hugging Face revision folder (its
    /// config.json and weights) over `--hf-probe` token windows, recording
    /// every tap, stream and attention weight, in chunks of `--hf-windows`
    /// windows: what `scripts/hf_peer.py` times as "forward_with_hooks".
    #[arg(long, requires = "hf_probe")]
    hf_forward: Option<PathBuf>,
    #[arg(long)]
    hf_probe: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    hf_windows: usize,
}

fn main() {
    lintrace::sigpipe::exit_quietly_on_closed_pipe();
    lintrace::model::ops::tune_malloc_for_training();
    let args = Args::parse();
    if std::env::var_os("LINTRACE_PARSE_ONLY").is_some() {
        return; // the command line parsed; nothing is run (tests/it/docs/doc_commands.rs)
    }
    if let Err(e) = real_main(&args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(args: &Args) -> Result<()> {
    if args.kernels {
        // The convolutions with TF32 products when asked (the Gram matrices are f64 either way).
        candle_core::cuda::set_gemm_reduced_precision_f32(args.tf32);
        return kernels(&lintrace::device::select(&args.device)?, args.batch_size, args.tf32);
    }
    if let (Some(dir), Some(probe)) = (&args.hf_forward, &args.hf_probe) {
        return hf_forward(dir, probe, args.hf_windows, &lintrace::device::select(&args.device)?);
    }
    if args.phases {
        candle_core::cuda::set_gemm_reduced_precision_f32(args.tf32);
        return phases(&lintrace::device::select(&args.device)?, args.batch_size, args.steps);
    }
    let _ = std::fs::remove_dir_all(&args.out);
    let mut cfg = TrainConfig::default();
    // A character-level GPT trains on the embedded corpus with AdamW, as
    // nanoGPT's shakespeare_char; everything else on CIFAR-10 with SGD.
    let lm = args.model.starts_with("gpt-char");
    if lm {
        cfg.data.dataset = "text".into();
        cfg.optimizer = lintrace::train::optim::OptimizerKind::Adamw;
        cfg.lr = 1e-3;
    } else {
        cfg.data.dataset = "image-folder".into();
        let dir = args.data_dir.clone().or_else(|| std::env::var_os("LINTRACE_CIFAR10").map(PathBuf::from));
        cfg.data.data_dir =
            Some(dir.context("CIFAR-10 is needed: pass --data-dir PATH (class folders or a .tar.gz of them) or set LINTRACE_CIFAR10")?);
    }
    cfg.steps = args.steps + 3;
    cfg.batch_size = args.batch_size;
    cfg.probe_size = args.probe_size;
    cfg.ckpt_per_decade = 0.0;
    cfg.out = args.out.clone();
    cfg.name = "bench".into();
    cfg.tf32 = args.tf32;
    cfg.model = args.model.clone();
    cfg.activation = args.activation.clone();
    if let Some(stem) = &args.stem {
        cfg.stem = Some(serde_json::from_value(serde_json::Value::String(stem.clone())).context("--stem: small or imagenet")?);
    }
    let t = Instant::now();
    let device = lintrace::device::select(&args.device)?;
    let dir = train::train(&cfg, &TrainOptions { overwrite: true, resume: false, quiet: true, device: device.clone() })?;
    let total = t.elapsed().as_secs_f64();
    let log = Table::read(&dir.join("train_log.parquet"), "train_log")?;
    let (wi, si) = (log.column_index("wall_seconds").context("wall")?, log.column_index("samples_seen").context("samples")?);
    let at = |row: usize| (log.rows[row][wi].as_f64().unwrap_or(0.0), log.rows[row][si].as_i64().unwrap_or(0) as f64);
    let (w0, s0) = at(2);
    let (w1, s1) = at(log.rows.len() - 1);
    println!("device: {}, threads: {}", args.device, rayon::current_num_threads());
    // Tokens per window for a language model (its samples are windows).
    let per = if lm { cfg.resolved().data.context.unwrap_or(1) as f64 } else { 1.0 };
    let unit = if lm { "tokens" } else { "images" };
    println!(
        "train: {}, batch {}, {} timed steps: {:.1} {unit}/s (whole command incl. data load: {:.1}s)",
        if args.model == "cnn" { "default CNN".to_string() } else { args.model.clone() },
        args.batch_size,
        args.steps,
        per * (s1 - s0) / (w1 - w0),
        total
    );

    println!(
        "forward: batch {}: {:.1} {unit}/s (evaluation mode, best of 3)",
        args.batch_size,
        per * forward_rate(&dir, args.batch_size, &device)?
    );
    if args.no_analysis {
        return Ok(());
    }
    let targets = analysis::discover(std::slice::from_ref(&dir), None)?.0;
    let ckpts = targets[0].checkpoints.len();
    let mut opts = AnalyzeOptions { force: true, quiet: true, jobs: 1, device: args.device.clone(), ..AnalyzeOptions::default() };
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
    println!("peak resident memory so far: {}", peak_rss());
    if args.no_per_analyzer {
        return Ok(());
    }
    for a in analyzers::all_analyzers() {
        opts.analyzers = vec![a.name().to_string()];
        let t = Instant::now();
        analysis::analyze(&targets, &opts)?;
        println!("analyze: {} alone: {:.2} s/checkpoint", a.name(), t.elapsed().as_secs_f64() / ckpts as f64);
    }
    Ok(())
}

/// Forward passes of the run's last checkpoint over random batches, in
/// images per second.
fn forward_rate(dir: &std::path::Path, batch: usize, device: &candle_core::Device) -> Result<f64> {
    let last = std::fs::read_dir(dir.join("checkpoints"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .max()
        .context("no checkpoint")?;
    let ck = lintrace::checkpoint::load(&last, None)?;
    let model = ck.model(device)?;
    let shape: Vec<usize> = std::iter::once(batch).chain(ck.meta.spec.input_shape.iter().copied()).collect();
    // Token models take ids in 0..vocab.
    let x = match ck.meta.spec.arch {
        lintrace::spec::Arch::Gpt(ref g) => candle_core::Tensor::rand(0f32, g.vocab as f32 - 0.5, shape, device)?.floor()?,
        _ => candle_core::Tensor::randn(0f32, 1.0, shape, device)?,
    };
    let reps = 3;
    let t = best_of(reps, || {
        model.logits(&x)?.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    })?;
    Ok(batch as f64 / t)
}

/// One timed pass over the probe with every tap recorded, cold (the first
/// chunk included), as the peer times its own.
fn hf_forward(dir: &std::path::Path, probe: &std::path::Path, windows: usize, device: &candle_core::Device) -> Result<()> {
    let probe = lintrace::probe::load(probe)?;
    let context = *probe.sample_shape.first().context("a probe of token windows")?;
    let spec = lintrace::hf::config::spec_of(&dir.join("config.json"), context)?;
    let lintrace::spec::Arch::HfCausalLm(arch) = &spec.arch else { anyhow::bail!("not a Hugging Face language model") };
    let t = Instant::now();
    let model = lintrace::model::build(&spec, lintrace::hf::load::read_weights(dir, arch)?, device)?;
    let load = t.elapsed().as_secs_f64();
    let n = probe.inputs.len() / context;
    let x = candle_core::Tensor::from_slice(&probe.inputs, (n, context), device)?;
    let chunk = |i: usize| x.narrow(0, i, windows.min(n - i));
    let t = Instant::now();
    let mut values = 0usize;
    for i in (0..n).step_by(windows.max(1)) {
        let (logits, rec) = model.forward_recorded(&chunk(i)?)?;
        values += logits.elem_count() + rec.taps.iter().map(|v| v.z.elem_count() + v.a.elem_count()).sum::<usize>();
    }
    let forward = t.elapsed().as_secs_f64();
    println!("hf forward: load {load:.2} s, forward with every tap {forward:.2} s ({n} windows of {context}, {windows} per chunk, {values} values), peak {}", peak_rss());
    Ok(())
}

/// The process's peak resident set (VmHWM), for the memory column.
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.trim_start_matches("VmHWM:").trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// Best of `reps` timings of `f`, in seconds (after one warm-up call).
fn best_of(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// GFLOP/s of the kernels that dominate training and analysis. On a GPU,
/// each convolution and the 2×2 max pool are also checked against the CPU
/// build (values and gradients, one line each ending in `ok` or `FAIL`),
/// and timed on every path this build has (cuDNN, then candle's).
fn kernels(dev: &candle_core::Device, batch: usize, tf32: bool) -> Result<()> {
    use candle_core::{Tensor, Var};
    use lintrace::model::ops::conv2d_bias;
    use lintrace::model::ops::max_pool2d;
    println!("device: {dev:?}, threads: {}", rayon::current_num_threads());
    // Paths to time: under `--features cudnn` both the cuDNN ops and the
    // candle path they replace (LINTRACE_CUDNN=off is read at each call).
    let paths: &[&str] = if cfg!(feature = "cudnn") && dev.is_cuda() { &["cudnn", "candle"] } else { &["default"] };
    let set_path = |p: &str| {
        if p == "candle" {
            std::env::set_var("LINTRACE_CUDNN", "off")
        } else {
            std::env::remove_var("LINTRACE_CUDNN")
        }
    };
    // Agreement with the CPU: max |gpu − cpu| / max |cpu| per tensor.
    // Strict fp32 differs only in summation order; TF32 rounds the inputs
    // of every product to 10-bit mantissas.
    let tol = if tf32 { 1e-2 } else { 1e-4 };
    for (c, o, hw) in [(3usize, 32usize, 32usize), (32, 64, 32), (64, 64, 16)] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (batch, c, hw, hw), dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (o, c, 3, 3), dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.1, o, dev)?)?;
        let flop = 2.0 * (batch * o * hw * hw * c * 9) as f64;
        for path in paths {
            set_path(path);
            let fwd = best_of(3, || sync(&conv2d_bias(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1, 1)?))?;
            let both = best_of(3, || {
                let y = conv2d_bias(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1, 1)?;
                let g = y.sum_all()?.backward()?;
                sync(g.get(w.as_tensor()).expect("weight gradient"))
            })?;
            println!(
                "conv {c}->{o} at {hw}x{hw}, batch {batch} [{path}]: forward {:.2} ms = {:.1} GFLOP/s; forward+backward {:.2} ms = {:.1} GFLOP/s",
                fwd * 1e3,
                flop / fwd / 1e9,
                both * 1e3,
                3.0 * flop / both / 1e9
            );
            if !dev.is_cpu() {
                let cpu = candle_core::Device::Cpu;
                let (xc, wc, bc) = (
                    Var::from_tensor(&x.to_device(&cpu)?)?,
                    Var::from_tensor(&w.to_device(&cpu)?)?,
                    Var::from_tensor(&b.to_device(&cpu)?)?,
                );
                // A non-uniform upstream gradient, so a transposed or
                // shifted dx/dw cannot pass.
                let r = Tensor::randn(0f32, 1.0, (batch, o, hw, hw), dev)?;
                let rc = r.to_device(&cpu)?;
                let y = conv2d_bias(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1, 1)?;
                let g = (&y * &r)?.sum_all()?.backward()?;
                let yc = conv2d_bias(xc.as_tensor(), wc.as_tensor(), bc.as_tensor(), 1, 1)?;
                let gc = (&yc * &rc)?.sum_all()?.backward()?;
                let pairs = [
                    ("y", y.clone(), yc.clone()),
                    ("dx", grad(&g, &x)?, grad(&gc, &xc)?),
                    ("dw", grad(&g, &w)?, grad(&gc, &wc)?),
                    ("db", grad(&g, &b)?, grad(&gc, &bc)?),
                ];
                report_check(&format!("conv {c}->{o} at {hw}x{hw} [{path}]"), &pairs, tol)?;
            }
        }
    }
    // The 2x2 max pool of the default CNN's 64-channel 32x32 activation.
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (batch, 64, 32, 32), dev)?)?;
    for path in paths {
        set_path(path);
        let both = best_of(3, || {
            let g = max_pool2d(x.as_tensor(), 2)?.sum_all()?.backward()?;
            sync(g.get(x.as_tensor()).expect("input gradient"))
        })?;
        println!("max-pool 2x2, 64 channels at 32x32, batch {batch} [{path}]: forward+backward {:.2} ms", both * 1e3);
        if !dev.is_cpu() {
            let cpu = candle_core::Device::Cpu;
            let xc = Var::from_tensor(&x.to_device(&cpu)?)?;
            let r = Tensor::randn(0f32, 1.0, (batch, 64, 16, 16), dev)?;
            let y = max_pool2d(x.as_tensor(), 2)?;
            let g = (&y * &r)?.sum_all()?.backward()?;
            let yc = max_pool2d(xc.as_tensor(), 2)?;
            let gc = (&yc * &r.to_device(&cpu)?)?.sum_all()?.backward()?;
            // Exact: a max and a routed gradient involve no rounding.
            report_check(&format!("max-pool 2x2 [{path}]"), &[("y", y.clone(), yc.clone()), ("dx", grad(&g, &x)?, grad(&gc, &xc)?)], 0.0)?;
        }
    }
    std::env::remove_var("LINTRACE_CUDNN");
    for (n, f) in [(2048usize, 16384usize), (2048, 65536)] {
        let a = Tensor::randn(0f32, 1.0, (n, f), dev)?;
        let chunks: Vec<Tensor> = (0..n).step_by(256).map(|s| a.narrow(0, s, 256)).collect::<candle_core::Result<_>>()?;
        let t = best_of(1, || {
            // dot() reduces on the device: the time includes finishing the Gram.
            let g = analyzers::gram::Gram::from_chunks(&chunks)?;
            g.dot(&g)?;
            Ok(())
        })?;
        println!("centred Gram, f64, n {n}, {f} features: {:.2} s = {:.1} GFLOP/s", t, 2.0 * (n * n * f) as f64 / t / 1e9);
    }
    Ok(())
}

/// Waits for the device to finish `t` (a one-number copy to the host).
fn sync(t: &candle_core::Tensor) -> Result<()> {
    t.sum_all()?.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
    Ok(())
}

fn grad(g: &candle_core::backprop::GradStore, v: &candle_core::Var) -> Result<candle_core::Tensor> {
    g.get(v.as_tensor()).cloned().context("a gradient is missing")
}

/// One line: the largest |device − cpu| relative to max |cpu| of each
/// tensor, then `ok` when all are within `tol`, else `FAIL`.
fn report_check(what: &str, pairs: &[(&str, candle_core::Tensor, candle_core::Tensor)], tol: f64) -> Result<()> {
    let mut parts = Vec::new();
    let mut ok = true;
    for (name, dev, cpu) in pairs {
        let d = dev.to_device(&candle_core::Device::Cpu)?.to_dtype(candle_core::DType::F64)?;
        let c = cpu.to_dtype(candle_core::DType::F64)?;
        let diff = (&d - &c)?.abs()?.max_all()?.to_scalar::<f64>()?;
        let scale = c.abs()?.max_all()?.to_scalar::<f64>()?.max(f64::MIN_POSITIVE);
        let rel = diff / scale;
        ok &= rel <= tol;
        parts.push(format!("{name} {rel:.1e}"));
    }
    println!(
        "check {what} against the CPU (max |diff| / max |cpu|, tolerance {tol:.0e}): {} {}",
        parts.join(", "),
        if ok { "ok" } else { "FAIL" }
    );
    Ok(())
}

/// Where a training step's time goes (`--phases`).
fn phases(dev: &candle_core::Device, batch: usize, steps: u64) -> Result<()> {
    use candle_core::Tensor;
    use lintrace::model::Taps;
    use lintrace::train::optim::{Optimizer, OptimizerKind};
    let cfg = TrainConfig::default();
    let spec = cfg.model_spec(&[3, 32, 32], 10, None)?;
    let (_, vars, model) = train::init_model(&cfg, &spec, dev)?;
    let mut opt = Optimizer::new(OptimizerKind::Momentum, vars, 0.0, 0.9);
    let x = Tensor::randn(0f32, 1.0, (batch, 3, 32, 32), dev)?;
    let y = Tensor::from_vec((0..batch as u32).map(|i| i % 10).collect::<Vec<u32>>(), batch, dev)?;
    let step = |opt: &mut Optimizer, times: Option<&mut [f64; 3]>| -> Result<()> {
        let t0 = Instant::now();
        let logits = model.forward(&x, &mut Taps::off())?;
        let loss = train::loss(&logits, &y, 0.0)?;
        let mut t = [0.0; 3];
        if times.is_some() {
            sync(&loss)?;
        }
        t[0] = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let grads = loss.backward()?;
        if times.is_some() {
            for v in opt.vars() {
                sync(grads.get(v.as_tensor()).context("a gradient is missing")?)?;
            }
        }
        t[1] = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        opt.step(&grads, 0.01, 1.0)?;
        if times.is_some() {
            sync(opt.vars()[0].as_tensor())?;
        }
        t[2] = t2.elapsed().as_secs_f64();
        if let Some(times) = times {
            for (a, b) in times.iter_mut().zip(t) {
                *a += b;
            }
        }
        Ok(())
    };
    for _ in 0..3 {
        step(&mut opt, None)?;
    }
    sync(opt.vars()[0].as_tensor())?;
    let mut times = [0.0; 3];
    for _ in 0..steps {
        step(&mut opt, Some(&mut times))?;
    }
    let ms = |t: f64| t / steps as f64 * 1e3;
    println!("device: {dev:?}, default CNN, batch {batch}, momentum SGD, {steps} steps");
    println!(
        "phases (each ended by a device sync): forward+loss {:.2} ms, backward {:.2} ms, update {:.2} ms, sum {:.2} ms/step",
        ms(times[0]),
        ms(times[1]),
        ms(times[2]),
        ms(times.iter().sum())
    );
    // Whole steps, synchronised only at the end: the time the GPU needs
    // when the host keeps ahead; host-side time to issue the steps.
    let mut issue = 0.0;
    let t = Instant::now();
    for _ in 0..steps {
        let t0 = Instant::now();
        step(&mut opt, None)?;
        issue += t0.elapsed().as_secs_f64();
    }
    sync(opt.vars()[0].as_tensor())?;
    let whole = t.elapsed().as_secs_f64();
    println!(
        "steps (one sync at the end): {:.2} ms/step = {:.0} images/s; host time issuing them {:.2} ms/step",
        ms(whole),
        (batch as u64 * steps) as f64 / whole,
        ms(issue)
    );
    Ok(())
}
