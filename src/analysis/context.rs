//! Inputs shared by all checkpoints of one target: the reference Gram
//! matrices (step 0 and final) for `cka_time`, the step-0 weights for
//! `weights`, and the held-out data and surrogate predictions for `mu`.

use super::capture;
use super::target::Target;
use super::AnalyzeOptions;
use crate::checkpoint;
use crate::data;
use crate::model::Model;
use crate::spec::ModelSpec;
use crate::surrogate::{self, linear, EvalSet, Source};
use analyzers::gram::Gram;
use analyzers::mu::SurrogatePredictions;

/// Held-out tokens `mu` compares a language model on: docs/metrics.md asks for
/// at least 10⁵; 2¹⁷ is 512 windows of 256.
pub const MU_TOKENS: usize = 1 << 17;
use analyzers::{LayerWeights, Needs};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// (accuracy, samples) of a surrogate's predictions on the probe.
fn probe_accuracy(predictions: &[usize], labels: &[i64]) -> (f64, u64) {
    let right = predictions.iter().zip(labels).filter(|(a, b)| **a as i64 == **b).count();
    (right as f64 / labels.len().max(1) as f64, labels.len() as u64)
}

/// A surrogate whose predictions do not depend on F's step.
struct Fixed {
    name: String,
    predictions: Vec<usize>,
    train_accuracy: Option<(f64, u64)>,
    probe_accuracy: Option<(f64, u64)>,
}

#[derive(Default)]
pub struct TargetContext {
    pub init_grams: Option<(u64, Vec<Gram>)>,
    pub final_grams: Option<(u64, Vec<Gram>)>,
    /// The final checkpoint is step 0: `init_grams` serve as both.
    final_is_init: bool,
    pub init_weights: Option<Vec<LayerWeights>>,
    eval: Option<EvalSet>,
    /// The held-out inputs on the device, uploaded once for all checkpoints.
    eval_batches: Option<capture::Batches>,
    fixed: Vec<Fixed>,
    /// Runs compared at F's own step: (folder, run id).
    same_step: Vec<(PathBuf, String)>,
    /// A run of captured activations: its surrogates' predictions on the
    /// probe (`captured.rs`).
    pub(super) captured_surrogates: Option<super::captured_mu::Surrogates>,
}

/// The weight matrix feeding each tap, reshaped to out × fan_in.
pub fn layer_weights(spec: &ModelSpec, tensors: &BTreeMap<String, Tensor>) -> Result<Vec<LayerWeights>> {
    spec.layers()
        .into_iter()
        .filter_map(|l| l.tap.map(|t| (t, l)))
        .map(|(tap, l)| {
            let name = format!("{}.weight", l.name);
            let t = tensors.get(&name).with_context(|| format!("tensor '{name}' is missing"))?;
            let (rows, cols) = (l.weight_shape[0], l.fan_in());
            Ok(LayerWeights { tap, rows, cols, data: t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()? })
        })
        .collect()
}

impl TargetContext {
    pub fn prepare(
        target: &Target,
        needs: Needs,
        sources: &[Source],
        opts: &AnalyzeOptions,
        final_step: Option<u64>,
        dev: &Device,
        notes: &mut Vec<String>,
    ) -> Result<TargetContext> {
        let mut ctx = TargetContext::default();
        let load = |step: u64| -> Result<checkpoint::Loaded> {
            let path = target.checkpoint_at(step).with_context(|| format!("no checkpoint for step {step}"))?;
            target.load_checkpoint(path, step)
        };
        ctx.prepare_references(
            target,
            needs,
            final_step,
            notes,
            |step| {
                let l = load(step)?;
                capture::grams(&l.model(dev)?, &l.meta.spec, &target.probe, opts.chunk(), dev)
            },
            || load(0).and_then(|l| layer_weights(&l.meta.spec, &l.tensors)),
        );
        if needs.surrogates {
            ctx.prepare_surrogates(target, sources, opts, dev, notes)?;
        }
        Ok(ctx)
    }

    /// The step-0 and final Grams (`cka_time`) and the step-0 weights
    /// (`weights`), as `needs` asks, from `grams` of a step and `init_weights`;
    /// what cannot be had is a note, and the rows that need it are null.
    pub(super) fn prepare_references(
        &mut self,
        target: &Target,
        needs: Needs,
        final_step: Option<u64>,
        notes: &mut Vec<String>,
        grams: impl Fn(u64) -> Result<Vec<Gram>>,
        init_weights: impl FnOnce() -> Result<Vec<LayerWeights>>,
    ) {
        if needs.reference_grams {
            for (which, step) in [("init", Some(0)), ("final", final_step)] {
                let Some(step) = step else { continue };
                // A run whose final checkpoint is step 0 (a one-revision
                // series): one pass, one set of Grams, and CKA of a Gram with
                // itself, not a cross product of two copies.
                if which == "final" && self.init_grams.as_ref().is_some_and(|(s, _)| *s == step) {
                    self.final_is_init = true;
                    continue;
                }
                match grams(step) {
                    Ok(g) if which == "init" => self.init_grams = Some((step, g)),
                    Ok(g) => self.final_grams = Some((step, g)),
                    Err(e) => notes.push(format!("{}: cka_time has no {which} reference: {e:#}", target.run_id)),
                }
            }
        }
        if needs.weights {
            match init_weights() {
                Ok(w) => self.init_weights = Some(w),
                Err(e) => notes.push(format!("{}: weights: rel_dist_from_init is null: step 0 unreadable ({e:#})", target.run_id)),
            }
        }
    }

    /// What the analyzers of the checkpoint of `step` share: the reference
    /// Grams (its own among them when it is step 0 or the final one, so they
    /// are not computed twice), the step-0 weights, and `weights` and
    /// `surrogates` of this checkpoint.
    pub fn shared<'a>(
        &'a self,
        step: u64,
        weights: Option<&'a [LayerWeights]>,
        surrogates: &'a [SurrogatePredictions],
    ) -> capture::Shared<'a> {
        let init_grams = self.init_grams.as_ref().map(|(s, g)| (*s, g.as_slice()));
        let final_grams = if self.final_is_init { init_grams } else { self.final_grams.as_ref().map(|(s, g)| (*s, g.as_slice())) };
        let grams = [init_grams, final_grams].into_iter().flatten().find(|(s, _)| *s == step).map(|(_, g)| g);
        capture::Shared { init_grams, final_grams, grams, weights, init_weights: self.init_weights.as_deref(), surrogates }
    }

    fn prepare_surrogates(
        &mut self,
        target: &Target,
        sources: &[Source],
        opts: &AnalyzeOptions,
        dev: &Device,
        notes: &mut Vec<String>,
    ) -> Result<()> {
        let dataset = match target.data_config() {
            Some(cfg) => Some(data::load(&cfg).with_context(|| format!("{}: reloading the run's dataset for mu", target.run_id))?),
            None => None,
        };
        let eval = match (&dataset, opts.mu_split.as_str()) {
            (Some(d), "test") => {
                // A language model: the held-out windows holding the first
                // MU_TOKENS tokens (all of them when the split is smaller).
                let windows = match d.test.targets {
                    1 => d.test.len(),
                    t => d.test.len().min(MU_TOKENS.div_ceil(t)),
                };
                EvalSet {
                    split: "test".into(),
                    x: d.test.x[..windows * d.test.sample_len].to_vec(),
                    sample_shape: d.sample_shape.clone(),
                    y: d.test.y[..windows * d.test.targets].iter().map(|&v| v as usize).collect(),
                }
            }
            _ => {
                // A Hugging Face series has no split but its probe text's;
                // its bigram surrogate is counted outside the probe.
                if opts.mu_split == "test" && !target.is_hugging_face() {
                    notes.push(format!("{}: mu: no dataset known for these checkpoints, so mu uses the probe", target.run_id));
                }
                EvalSet {
                    split: "probe".into(),
                    x: target.probe.inputs.clone(),
                    sample_shape: target.probe.sample_shape.clone(),
                    y: target.probe.labels.iter().map(|&v| v as usize).collect(),
                }
            }
        };
        let batches = eval.batches(opts.chunk(), dev)?;
        for source in sources {
            match source {
                Source::Linear if target.bigram().is_some() => {
                    // A large vocabulary's linear surrogate (one-hot token →
                    // softmax) is the bigram model; counted, not fitted.
                    let b = target.bigram().expect("checked by the guard");
                    let at =
                        |x: &[f32]| -> Vec<usize> { x.iter().map(|&t| b.next.get(t as usize).copied().unwrap_or(0) as usize).collect() };
                    let p = &target.probe;
                    let on_probe = at(&p.inputs);
                    self.fixed.push(Fixed {
                        name: "bigram".into(),
                        predictions: at(&eval.x),
                        train_accuracy: Some((b.train_accuracy, b.counted)),
                        probe_accuracy: Some(probe_accuracy(&on_probe, &p.labels)),
                    });
                }
                Source::Linear => {
                    let Some(d) = &dataset else {
                        notes.push(if target.is_hugging_face() {
                            format!("{}: mu: no surrogate (the bigram model is counted on a --probe-text's text outside the probe; this probe was given as token ids): no mu rows", target.run_id)
                        } else {
                            format!("{}: mu: the linear surrogate needs the run's training data; skipped", target.run_id)
                        });
                        continue;
                    };
                    let cache_dir = target.data_config().and_then(|c| c.cache_dir).unwrap_or_else(data::cache_dir);
                    let m = linear::get(d, &cache_dir, opts.quiet, dev)?;
                    // The bigram model of a language model reads one token
                    // and predicts the next at every position.
                    let per_token = d.train.targets > 1;
                    let d_len: usize = if per_token { 1 } else { eval.sample_shape.iter().product() };
                    let p = &target.probe;
                    // The probe must fit the surrogate too: a run folder
                    // written elsewhere may name a dataset its probe is not from.
                    let probe_len = if per_token { 1 } else { p.sample_len() };
                    if d_len != m.input_len() || probe_len != d_len {
                        notes.push(format!(
                            "{}: mu: linear surrogate input size {} does not match the data ({d_len}) or the probe ({probe_len})",
                            target.run_id,
                            m.input_len()
                        ));
                        continue;
                    }
                    let rows = |x: &[f32], samples: usize| if per_token { x.len() } else { samples };
                    let on_probe = m.predict(&p.inputs, rows(&p.inputs, p.len()));
                    self.fixed.push(Fixed {
                        name: "linear".into(),
                        predictions: m.predict(&eval.x, rows(&eval.x, eval.samples())),
                        train_accuracy: Some((m.train_accuracy, d.train.y.len() as u64)),
                        probe_accuracy: Some(probe_accuracy(&on_probe, &p.labels)),
                    });
                }
                Source::Checkpoint(path) => {
                    let (name, model) = surrogate::load_checkpoint(path, dev)?;
                    self.fixed.push(Fixed {
                        name,
                        predictions: surrogate::predict(&model, &batches)?,
                        train_accuracy: None,
                        probe_accuracy: None,
                    });
                }
                Source::Run { dir, same_step: false } => {
                    let (name, model) = surrogate::load_checkpoint(&surrogate::final_checkpoint(dir)?, dev)?;
                    self.fixed.push(Fixed {
                        name,
                        predictions: surrogate::predict(&model, &batches)?,
                        train_accuracy: None,
                        probe_accuracy: None,
                    });
                }
                Source::Run { dir, same_step: true } => self.same_step.push((dir.clone(), surrogate::run_id(dir)?)),
            }
        }
        self.eval = Some(eval);
        self.eval_batches = Some(batches);
        Ok(())
    }

    /// F's predictions against every surrogate, at F's `step`.
    pub fn surrogate_predictions(&self, model: &Model, step: u64, dev: &Device) -> Result<Vec<SurrogatePredictions>> {
        let (Some(eval), Some(batches)) = (&self.eval, &self.eval_batches) else { return Ok(Vec::new()) };
        let f = surrogate::predict(model, batches)?;
        let mut out: Vec<SurrogatePredictions> = self
            .fixed
            .iter()
            .map(|s| SurrogatePredictions {
                name: s.name.clone(),
                split: eval.split.clone(),
                f: f.clone(),
                s: s.predictions.clone(),
                y: eval.y.clone(),
                train_accuracy: s.train_accuracy,
                probe_accuracy: s.probe_accuracy,
            })
            .collect();
        for (dir, run_id) in &self.same_step {
            let path = crate::run::checkpoint_dir(dir).join(checkpoint::file_name(step));
            if !path.is_file() {
                continue;
            }
            let (_, m) = surrogate::load_checkpoint(&path, dev)?;
            out.push(SurrogatePredictions {
                name: format!("{run_id}@same"),
                split: eval.split.clone(),
                f: f.clone(),
                s: surrogate::predict(&m, batches)?,
                y: eval.y.clone(),
                train_accuracy: None,
                probe_accuracy: None,
            });
        }
        Ok(out)
    }
}
