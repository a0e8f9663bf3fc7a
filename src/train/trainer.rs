//! The training loop: data → model → log-spaced checkpoints, probe, log.

use crate::checkpoint::{self, CheckpointMeta};
use crate::data::{self, Dataset};
use crate::init::init_params;
use crate::lock;
use crate::model::{Model, Weights};
use crate::probe;
use crate::run::{self, DatasetInfo, RunManifest, Status};
use crate::tables::{Table, Value};
use crate::train::config::TrainConfig;
use crate::train::optim::Optimizer;
use crate::train::state::{self, Buffers, Position};
use crate::train::steps::checkpoint_steps;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub struct TrainOptions {
    /// Replace an existing run directory of the same id.
    pub overwrite: bool,
    /// An existing run of the same config is continued from its last
    /// checkpoint (or left alone when finished) instead of refused.
    pub resume: bool,
    pub quiet: bool,
    pub device: Device,
}

/// What was found where a run is about to be trained.
enum Previous {
    Nothing,
    Finished,
    Interrupted(Box<RunManifest>),
}

/// Checks an existing run folder against the config about to be trained.
fn previous_run(run_dir: &Path, cfg: &TrainConfig) -> Result<Previous> {
    if !run::is_run_dir(run_dir) {
        // Killed before its manifest was written: nothing worth keeping.
        return Ok(Previous::Nothing);
    }
    let m = RunManifest::read(run_dir)?;
    if let Some(key) = m.config.first_difference(cfg) {
        bail!("{}: exists with a different config ('{key}' differs); use --overwrite to replace it, or another name", run_dir.display());
    }
    Ok(if m.status.is_done() { Previous::Finished } else { Previous::Interrupted(Box::new(m)) })
}

/// Trains one run and returns its directory.
/// TF32 matrix products for the duration of a training run (a process
/// that analyses afterwards, as lintrace-bench does, gets fp32 back).
struct Tf32(bool);

impl Tf32 {
    fn set(on: bool) -> Tf32 {
        let before = candle_core::cuda::gemm_reduced_precision_f32();
        candle_core::cuda::set_gemm_reduced_precision_f32(on);
        Tf32(before)
    }
}

impl Drop for Tf32 {
    fn drop(&mut self) {
        candle_core::cuda::set_gemm_reduced_precision_f32(self.0);
    }
}

pub fn train(cfg: &TrainConfig, opts: &TrainOptions) -> Result<PathBuf> {
    let cfg = &cfg.resolved();
    cfg.check()?;
    // Orthogonal init runs faer's QR: a fixed degree of parallelism keeps
    // the initial weights the same bits whatever the thread count.
    analyzers::fix_faer_parallelism();
    let run_id = cfg.run_id();
    let run_dir = cfg.out.join(&run_id);
    let existed = has_content(&run_dir);
    // Held to the end of training: a second trainer of this run (a
    // resubmitted array task, another terminal) is refused, naming us.
    let lock = lock::acquire(&run_dir, "training")?;
    let tf32 = Tf32::set(cfg.tf32 && opts.device.is_cuda());
    let result = train_locked(cfg, opts, &run_dir, &run_id, existed);
    drop(tf32);
    if result.is_err() && !existed && !run::is_run_dir(&run_dir) {
        // Refused before anything worth keeping was written (bad data,
        // bad spec): leave no empty run folder behind.
        drop(lock);
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    result
}

/// Whether `run_dir` holds anything but its lock file.
fn has_content(run_dir: &Path) -> bool {
    std::fs::read_dir(run_dir).is_ok_and(|mut entries| entries.any(|e| e.is_ok_and(|e| e.file_name() != lock::FILE)))
}

fn train_locked(cfg: &TrainConfig, opts: &TrainOptions, run_dir: &Path, run_id: &str, existed: bool) -> Result<PathBuf> {
    let run_dir = run_dir.to_path_buf();
    let run_id = run_id.to_string();
    crate::atomic::remove_stale_temps(&run::checkpoint_dir(&run_dir))?;
    let mut previous = None;
    if existed {
        if opts.overwrite {
            clear_run_dir(&run_dir)?;
        } else if opts.resume {
            match previous_run(&run_dir, cfg)? {
                Previous::Finished => return Ok(run_dir),
                Previous::Interrupted(m) => previous = Some(*m),
                Previous::Nothing => clear_run_dir(&run_dir)?,
            }
        } else {
            bail!("{}: run already exists (use --overwrite to replace it, or --name for another id)", run_dir.display());
        }
    }
    let mut data = data::load(&cfg.data)?;
    if let Some(teacher) = cfg.targets.strip_prefix("teacher:") {
        if data.train.targets > 1 {
            bail!("targets teacher:{teacher}: a language model's corpus keeps its own next tokens");
        }
        relabel_with_teacher(&mut data, teacher, &opts.device)?;
    }
    // A language model's samples are (window, position) pairs (docs/metrics.md),
    // so its probe_size counts tokens: whole windows holding at least that many.
    let probe_windows = cfg.probe_size.div_ceil(data.train.targets.max(1));
    if probe_windows > data.test.len() && previous.is_none() {
        // Not refused: the default probe (2,048) is larger than small test
        // splits (digits: 359). Said once; run.json records the real size.
        eprintln!(
            "note: probe_size {} is larger than the test split it is drawn from ({} samples): the probe holds all {}",
            cfg.probe_size,
            data.test.len(),
            data.test.len()
        );
    }
    let spec = cfg.model_spec(&data.sample_shape, data.classes.len(), data.vocab)?;
    if spec.predictions_per_sample() != data.train.targets {
        bail!(
            "model '{}' makes {} prediction(s) per sample but dataset '{}' has {} label(s) per sample (a language model needs --dataset text, and the text dataset a gpt-char model)",
            cfg.model,
            spec.predictions_per_sample(),
            cfg.data.dataset,
            data.train.targets
        );
    }
    std::fs::create_dir_all(run::checkpoint_dir(&run_dir)).with_context(|| format!("{}: cannot create", run_dir.display()))?;

    let n_train = data.train.len();
    let total = if cfg.steps > 0 { cfg.steps } else { (cfg.epochs * n_train as f64 / cfg.batch_size as f64).ceil() as u64 };
    let ckpt_steps = checkpoint_steps(total, cfg.spacing(), cfg.ckpt_every);

    let probe = probe::draw(&data.test, &data.sample_shape, probe_windows, cfg.probe_seed, &data.name, "test");
    if let Some(m) = &previous {
        if m.probe_hash != probe.hash || m.dataset.fingerprint != data.fingerprint {
            bail!("{}: cannot resume: its data or probe no longer match (was the dataset changed?)", run_dir.display());
        }
    } else {
        probe::save(&run_dir.join(run::PROBE), &probe)?;
    }

    // A resumable run continues from its train state; without one (killed
    // before the first checkpoint) it starts over.
    let resume = match &previous {
        Some(_) if run_dir.join(state::FILE).is_file() => Some(state::load(&run_dir, &opts.device)?),
        _ => None,
    };
    let mut manifest = match previous {
        Some(m) => RunManifest { status: Status::Running, error: None, ..m },
        None => RunManifest {
            run_id: run_id.clone(),
            status: Status::Running,
            lintrace_version: env!("CARGO_PKG_VERSION").into(),
            config: cfg.clone(),
            spec: serde_json::from_str(&spec.to_json())?,
            n_parameters: spec.num_parameters(),
            n_taps: spec.num_taps(),
            dataset: DatasetInfo {
                name: data.name.clone(),
                fingerprint: data.fingerprint.clone(),
                classes: data.classes.clone(),
                sample_shape: data.sample_shape.clone(),
                n_train,
                n_test: data.test.len(),
                normalisation: data.normalisation.clone(),
            },
            probe_hash: probe.hash.clone(),
            probe_size: probe.len(),
            total_steps: total,
            steps_done: 0,
            checkpoint_steps: ckpt_steps.clone(),
            started_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            wall_seconds: 0.0,
            error: None,
            checkpoint_sha256: BTreeMap::new(),
            diverged_at_step: None,
        },
    };
    manifest.write(&run_dir)?;

    let result = Loop::new(cfg, &data, &spec, &run_dir, &run_id, &opts.device)
        .and_then(|mut l| l.run(total, &ckpt_steps.iter().copied().collect(), opts.quiet, &mut manifest, resume));
    match result {
        Ok(()) => {
            manifest.status = Status::Finished;
            manifest.write(&run_dir)?;
            Ok(run_dir)
        }
        Err(e) => {
            manifest.status = Status::Failed;
            if let Some(d) = e.downcast_ref::<Diverged>() {
                manifest.status = Status::Diverged;
                manifest.diverged_at_step = Some(d.step);
                manifest.steps_done = d.step - 1;
            }
            manifest.error = Some(format!("{e:#}"));
            // On a full disk this write fails too; the first error is the one to report.
            match manifest.write(&run_dir) {
                Ok(()) => Err(e),
                Err(w) => Err(e.context(format!("run.json could not be updated either ({w:#})"))),
            }
        }
    }
}

/// Empties a run folder for a fresh start, keeping only its lock file.
fn clear_run_dir(run_dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(run_dir).with_context(|| format!("{}: cannot read", run_dir.display()))? {
        let e = e?;
        if e.file_name() == lock::FILE {
            continue;
        }
        let p = e.path();
        let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        r.with_context(|| format!("{}: cannot remove", p.display()))?;
    }
    Ok(())
}

/// Training stopped at `step` because its loss was not finite. The run is
/// marked `diverged`; the checkpoints before it are kept and analysable.
#[derive(Debug, thiserror::Error)]
#[error("the loss became {loss} at step {step}: the run diverged (lower the learning rate?)")]
pub struct Diverged {
    pub step: u64,
    pub loss: f64,
}

/// Test hook: exit abruptly after this many steps, as a killed job would.
fn abort_after_step() -> Option<u64> {
    std::env::var("LINTRACE_ABORT_AFTER_STEP").ok()?.parse().ok()
}

/// The initial weights of `spec` under `cfg`'s init scheme, scale and seed,
/// as named variables on `device`, and the model (in training mode) that
/// holds them: updates made through the variables are what its next
/// forward pass sees.
pub fn init_model(cfg: &TrainConfig, spec: &crate::spec::ModelSpec, device: &Device) -> Result<(Vec<String>, Vec<Var>, Model)> {
    let mut names = Vec::new();
    let mut vars = Vec::new();
    let mut tensors = BTreeMap::new();
    for (name, shape, values) in init_params(spec, cfg.init, cfg.init_scale, cfg.seed) {
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, device)?)?;
        tensors.insert(name.clone(), var.as_tensor().clone());
        names.push(name);
        vars.push(var);
    }
    let model = Model::new(spec, Weights::new(tensors))?;
    model.set_training(true);
    Ok((names, vars, model))
}

struct Loop<'a> {
    cfg: &'a TrainConfig,
    data: &'a Dataset,
    spec: &'a crate::spec::ModelSpec,
    run_dir: &'a Path,
    run_id: &'a str,
    device: Device,
    names: Vec<String>,
    vars: Vec<Var>,
    model: Model,
    log: Table,
}

impl<'a> Loop<'a> {
    fn new(
        cfg: &'a TrainConfig,
        data: &'a Dataset,
        spec: &'a crate::spec::ModelSpec,
        run_dir: &'a Path,
        run_id: &'a str,
        device: &Device,
    ) -> Result<Self> {
        let (names, vars, model) = init_model(cfg, spec, device)?;
        Ok(Loop { cfg, data, spec, run_dir, run_id, device: device.clone(), names, vars, model, log: Table::new("train_log") })
    }

    /// Writes the checkpoint of `step` and returns its SHA-256.
    fn save_checkpoint(&self, step: u64, samples_seen: u64) -> Result<String> {
        let meta = CheckpointMeta {
            spec: self.spec.clone(),
            run_id: self.run_id.to_string(),
            step,
            epoch: samples_seen as f64 / self.data.train.len() as f64,
            samples_seen,
        };
        let tensors: Vec<(String, Tensor)> = self.names.iter().cloned().zip(self.vars.iter().map(|v| v.as_tensor().clone())).collect();
        let path = run::checkpoint_dir(self.run_dir).join(checkpoint::file_name(step));
        // PyTorch counts a BatchNorm's training forwards: one per step here.
        let counters: Vec<(String, i64)> =
            self.spec.batch_norms().into_iter().map(|(bn, _)| (format!("{bn}.num_batches_tracked"), step as i64)).collect();
        let sha = checkpoint::save_with_counters(&path, &meta, &tensors, &counters)?;
        self.log.write(&self.run_dir.join(run::TRAIN_LOG))?;
        Ok(sha)
    }

    fn run(
        &mut self,
        total: u64,
        ckpts: &BTreeSet<u64>,
        quiet: bool,
        manifest: &mut RunManifest,
        resume: Option<(Position, Buffers)>,
    ) -> Result<()> {
        let cfg = self.cfg;
        let n = self.data.train.len();
        let decay = self.names.iter().map(|n| !self.spec.no_decay(n)).collect();
        let mut opt = Optimizer::new(cfg.optimizer, self.vars.clone(), cfg.weight_decay, cfg.momentum)
            .with_betas(cfg.adam_beta1.unwrap_or(0.9), cfg.adam_beta2.unwrap_or(0.999))
            .with_decay_mask(decay);
        let mut aug_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_a06e);
        let mut pos =
            Position { step: 0, samples_seen: 0, epoch: 0, cursor: 0, aug_word_pos: String::new(), optimizer_t: 0, wall_seconds: 0.0 };
        let mut order: Vec<usize> = Vec::new();
        match resume {
            None => {
                manifest.checkpoint_sha256.insert(0, self.save_checkpoint(0, 0)?);
                manifest.write(self.run_dir)?;
                self.save_state(&pos, &opt, &aug_rng)?;
            }
            Some((saved, buffers)) => {
                self.restore_weights(saved.step)?;
                opt.restore(&self.names, buffers, saved.optimizer_t);
                aug_rng.set_word_pos(saved.aug_word_pos.parse().context("train state: bad augmentation position")?);
                if saved.epoch > 0 {
                    order = self.order(saved.epoch - 1);
                }
                let log_path = self.run_dir.join(run::TRAIN_LOG);
                if log_path.is_file() {
                    self.log = Table::read(&log_path, "train_log")?;
                    let si = self.log.column_index("step").expect("step column");
                    self.log.rows.retain(|r| r[si].as_i64().is_some_and(|s| s <= saved.step as i64));
                }
                // The train state leaves out wall time (it would make equal
                // states differ byte for byte); the log has it.
                let wi = self.log.column_index("wall_seconds").expect("wall_seconds column");
                let logged = self.log.rows.last().and_then(|r| r[wi].as_f64());
                pos = Position { wall_seconds: logged.unwrap_or(manifest.wall_seconds), ..saved };
            }
        }
        let abort_after = abort_after_step();
        let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(total) };
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps {per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(pos.step);
        let start = Instant::now();
        let wall0 = pos.wall_seconds;
        for step in pos.step + 1..=total {
            if pos.cursor >= order.len() {
                order = self.order(pos.epoch);
                pos.cursor = 0;
                pos.epoch += 1;
            }
            let idx = &order[pos.cursor..(pos.cursor + cfg.batch_size).min(n)];
            pos.cursor += idx.len();
            let (x, y) = self.batch(idx, &mut aug_rng)?;
            // Dropout masks from (seed, step): the same after a resume.
            self.model.set_dropout_key(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step);
            let logits = self.model.logits(&x)?;
            let loss = loss(&logits, &y, cfg.label_smoothing)?;
            // The loss and the number of correct predictions come back in
            // one copy: each copy to the host waits for the device, and
            // none after the update lets it overlap the next batch's
            // loading. The loss is checked before the update, so that no
            // non-finite value reaches the weights or the optimizer state.
            let correct = logits.argmax(1)?.eq(&y)?.to_dtype(DType::F32)?.sum_all()?;
            let stats = Tensor::stack(&[&loss.to_dtype(DType::F32)?, &correct], 0)?.to_vec1::<f32>()?;
            let (loss_v, correct) = (stats[0] as f64, stats[1] as f64);
            if !loss_v.is_finite() {
                bar.finish_and_clear();
                self.log.write(&self.run_dir.join(run::TRAIN_LOG))?;
                return Err(Diverged { step, loss: loss_v }.into());
            }
            let grads = loss.backward()?;
            if crate::fault::active() {
                crate::fault::point(&format!("step:{step}"));
            }
            let lr = cfg.lr_schedule.lr(cfg.lr, step, total, cfg.warmup_steps);
            // torch.nn.utils.clip_grad_norm_: scale by clip / (norm + 1e-6) when the norm exceeds it.
            let scale = if cfg.grad_clip > 0.0 {
                let norm = opt.grad_norm(&grads)?;
                if norm > cfg.grad_clip {
                    cfg.grad_clip / (norm + 1e-6)
                } else {
                    1.0
                }
            } else {
                1.0
            };
            opt.step(&grads, lr, scale)?;
            pos.samples_seen += idx.len() as u64;
            pos.step = step;
            pos.wall_seconds = wall0 + start.elapsed().as_secs_f64();

            self.log.push(vec![
                Value::Str(self.run_id.to_string()),
                Value::I64(step as i64),
                Value::F64(pos.samples_seen as f64 / n as f64),
                Value::opt_f64(Some(loss_v)),
                Value::opt_f64(Some(correct / y.dims()[0] as f64)),
                Value::F64(lr),
                Value::I64(pos.samples_seen as i64),
                Value::F64(pos.wall_seconds),
            ]);
            bar.set_position(step);
            bar.set_message(format!("loss {loss_v:.4}"));
            if ckpts.contains(&step) {
                // Checkpoint, then its hash in run.json, then the train
                // state: a kill between any two resumes from the previous
                // state and rewrites the same bytes, so run.json never lacks
                // the hash of a checkpoint that a resumed run skips.
                manifest.checkpoint_sha256.insert(step, self.save_checkpoint(step, pos.samples_seen)?);
                manifest.steps_done = step;
                manifest.wall_seconds = pos.wall_seconds;
                manifest.write(self.run_dir)?;
                self.save_state(&pos, &opt, &aug_rng)?;
            }
            if abort_after == Some(step) {
                bar.finish_and_clear();
                eprintln!("LINTRACE_ABORT_AFTER_STEP: stopping abruptly after step {step}");
                std::process::exit(75);
            }
        }
        bar.finish_and_clear();
        manifest.steps_done = total;
        manifest.wall_seconds = pos.wall_seconds;
        self.log.write(&self.run_dir.join(run::TRAIN_LOG))
    }

    /// The data order of epoch `epoch` (0-based): a fixed function of the
    /// seed, so a resumed run draws the same batches.
    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.data.train.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(self.cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(epoch)));
        order
    }

    fn save_state(&self, pos: &Position, opt: &Optimizer, aug_rng: &ChaCha8Rng) -> Result<()> {
        let pos = Position { aug_word_pos: aug_rng.get_word_pos().to_string(), optimizer_t: opt.updates_taken(), ..pos.clone() };
        state::save(self.run_dir, &pos, &opt.buffers(&self.names))
    }

    /// Loads the weights of the checkpoint at `step` into the variables.
    fn restore_weights(&self, step: u64) -> Result<()> {
        let path = run::checkpoint_dir(self.run_dir).join(checkpoint::file_name(step));
        let loaded = checkpoint::load(&path, None).context("cannot resume")?;
        for (name, var) in self.names.iter().zip(&self.vars) {
            let t = loaded.tensors.get(name).ok_or_else(|| anyhow::anyhow!("{}: tensor '{name}' is missing", path.display()))?;
            var.set(&t.to_device(&self.device)?)?;
        }
        Ok(())
    }

    /// Gathers a batch (with augmentation if asked) onto the device.
    fn batch(&self, idx: &[usize], rng: &mut ChaCha8Rng) -> Result<(Tensor, Tensor)> {
        let d = self.data.train.sample_len;
        let mut x = Vec::with_capacity(idx.len() * d);
        for &i in idx {
            let s = self.data.train.sample(i);
            if self.cfg.augment && self.data.is_image() && self.data.vocab.is_none() {
                x.extend(augment(s, &self.data.sample_shape, rng));
            } else {
                x.extend_from_slice(s);
            }
        }
        let mut shape = vec![idx.len()];
        shape.extend_from_slice(&self.data.sample_shape);
        // One label per sample, or per (window, position) for a language model.
        let y: Vec<u32> = idx.iter().flat_map(|&i| self.data.train.labels(i).iter().copied()).collect();
        let ny = y.len();
        Ok((Tensor::from_vec(x, shape, &self.device)?, Tensor::from_vec(y, ny, &self.device)?))
    }
}

/// Mean cross-entropy of `logits` [batch, classes] against `y`, with label
/// smoothing ε as PyTorch defines it: (1 − ε)·CE + ε·mean over classes of
/// −log p_k.
pub fn loss(logits: &Tensor, y: &Tensor, smoothing: f64) -> Result<Tensor> {
    let ce = candle_nn::loss::cross_entropy(logits, y)?;
    if smoothing == 0.0 {
        return Ok(ce);
    }
    let uniform = candle_nn::ops::log_softmax(logits, 1)?.mean_all()?.neg()?;
    Ok(((ce * (1.0 - smoothing))? + (uniform * smoothing)?)?)
}

/// Replaces the training labels by a teacher network's predictions
/// (Pinson et al.'s surrogates trained on the final network's outputs).
fn relabel_with_teacher(data: &mut Dataset, teacher: &str, device: &Device) -> Result<()> {
    use crate::surrogate::{self, EvalSet, Source};
    let path = match Source::parse(teacher).with_context(|| format!("targets teacher:{teacher}"))? {
        Source::Checkpoint(p) => p,
        Source::Run { dir, same_step: false } => surrogate::final_checkpoint(&dir)?,
        _ => bail!("targets teacher:{teacher}: expected a checkpoint file or a run folder"),
    };
    let (_, model) = surrogate::load_checkpoint(&path, device)?;
    let train =
        EvalSet { split: "train".into(), x: data.train.x.clone(), sample_shape: data.sample_shape.clone(), y: vec![0; data.train.len()] };
    let pred = surrogate::predict(&model, &train.batches(512, device)?)
        .with_context(|| format!("{}: teacher does not fit this dataset", path.display()))?;
    if pred.iter().any(|&p| p >= data.classes.len()) {
        bail!("{}: teacher predicts classes outside this dataset's {}", path.display(), data.classes.len());
    }
    data.train.y = pred.into_iter().map(|p| p as u32).collect();
    Ok(())
}

/// Random crop after zero-padding by H/8 (4 pixels on 32×32), then a
/// horizontal flip with probability ½ — the standard CIFAR augmentation.
fn augment(s: &[f32], shape: &[usize], rng: &mut ChaCha8Rng) -> Vec<f32> {
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    let pad = (h / 8).max(1) as i64;
    let dy = rng.gen_range(-pad..=pad);
    let dx = rng.gen_range(-pad..=pad);
    let flip = rng.gen_bool(0.5);
    let mut out = vec![0.0f32; s.len()];
    for ch in 0..c {
        for i in 0..h {
            for j in 0..w {
                let si = i as i64 + dy;
                let sj0 = j as i64 + dx;
                let sj = if flip { w as i64 - 1 - sj0 } else { sj0 };
                if (0..h as i64).contains(&si) && (0..w as i64).contains(&sj) {
                    out[(ch * h + i) * w + j] = s[(ch * h + si as usize) * w + sj as usize];
                }
            }
        }
    }
    out
}
