//! Datasets: where images and labels come from, before any model sees them.
//! Every source yields raw pixels scaled to [0, 1] (or raw features for the
//! synthetic tasks); `transform` then applies class subsets, groupings and
//! the per-channel normalisation fitted on the training split.

mod cache;
mod cifar_bin;
mod idx;
mod image_folder;
mod synthetic;
mod text;
mod transform;

pub use cache::default_dir as cache_dir;
pub use text::DEFAULT_CONTEXT;
pub use transform::{parse_groups, Normalisation};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// One split: `len()` samples of `sample_len` values each, row-major, and
/// `targets` labels per sample (1; or a language model's T next tokens, one
/// per position).
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub x: Vec<f32>,
    pub y: Vec<u32>,
    pub sample_len: usize,
    pub targets: usize,
}

impl Split {
    pub fn len(&self) -> usize {
        self.y.len() / self.targets.max(1)
    }
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
    pub fn sample(&self, i: usize) -> &[f32] {
        &self.x[i * self.sample_len..(i + 1) * self.sample_len]
    }
    /// The labels of sample `i`.
    pub fn labels(&self, i: usize) -> &[u32] {
        &self.y[i * self.targets..(i + 1) * self.targets]
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    /// [features] or [channels, height, width].
    pub sample_shape: Vec<usize>,
    pub classes: Vec<String>,
    pub train: Split,
    pub test: Split,
    pub normalisation: Option<Normalisation>,
    /// Content hash of the final data (after subsets and normalisation).
    pub fingerprint: String,
    /// Token datasets: inputs are token ids in `0..vocab` (never
    /// normalised or augmented).
    pub vocab: Option<usize>,
}

impl Dataset {
    pub fn is_image(&self) -> bool {
        self.sample_shape.len() == 3
    }
}

/// What to load; the trainer's `dataset`, `data_dir`, … keys.
// Unknown keys are rejected by TrainConfig, which flattens this struct
// (serde cannot combine flatten with deny_unknown_fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataConfig {
    /// cifar10 | image-folder | idx | digits | gaussian-mixture | sinusoid-2d
    pub dataset: String,
    pub data_dir: Option<PathBuf>,
    /// Keep only these classes (labels become their positions in this list).
    pub classes: Option<Vec<usize>>,
    /// Merge classes into groups, e.g. "0-4/5-9" for a binary task.
    pub groups: Option<String>,
    pub normalize: bool,
    /// Where decoded image folders are cached; default `$LINTRACE_CACHE` or
    /// `~/.cache/lintrace`.
    pub cache_dir: Option<PathBuf>,
    /// Seed of the synthetic generators (separate from the training seed, so
    /// that runs with different seeds share their data).
    pub data_seed: u64,
    /// Synthetic tasks: sizes and shape.
    pub n_train: usize,
    pub n_test: usize,
    pub synthetic_dim: usize,
    pub synthetic_classes: usize,
    /// modular-addition: the modulus p (default 113) and the share of the
    /// p² pairs used for training (default 0.3). Left out of the config's
    /// JSON when unset, so existing run ids do not change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modulus: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_fraction: Option<f64>,
    /// text: tokens per window (the model's context). Left out when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<usize>,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dataset: "digits".into(),
            data_dir: None,
            classes: None,
            groups: None,
            normalize: true,
            cache_dir: None,
            data_seed: 0,
            n_train: 4096,
            n_test: 2048,
            synthetic_dim: 16,
            synthetic_classes: 4,
            modulus: None,
            train_fraction: None,
            context: None,
        }
    }
}

/// Raw data from a source, before transforms.
pub(crate) struct RawData {
    pub sample_shape: Vec<usize>,
    pub classes: Vec<String>,
    pub train: Split,
    pub test: Split,
}

pub const DATASETS: &[&str] = &["cifar10", "image-folder", "idx", "digits", "gaussian-mixture", "sinusoid-2d", "modular-addition", "text"];

pub fn load(cfg: &DataConfig) -> Result<Dataset> {
    let need_dir = || -> Result<PathBuf> {
        match &cfg.data_dir {
            Some(d) => Ok(d.clone()),
            None => bail!("dataset '{}' needs --data-dir", cfg.dataset),
        }
    };
    let raw = match cfg.dataset.as_str() {
        "cifar10" => cifar_bin::load(&need_dir()?)?,
        "image-folder" => image_folder::load(&need_dir()?, cfg.cache_dir.as_deref())?,
        "idx" | "mnist" => idx::load_dir(&need_dir()?)?,
        "digits" => idx::load_digits()?,
        "gaussian-mixture" => synthetic::gaussian_mixture(cfg),
        "sinusoid-2d" => synthetic::sinusoid_2d(cfg),
        "modular-addition" => synthetic::modular_addition(cfg)?,
        "text" => text::load(cfg.data_dir.as_deref(), cfg.context.unwrap_or(text::DEFAULT_CONTEXT))?,
        other => bail!("unknown dataset '{other}' (expected one of: {})", DATASETS.join(", ")),
    };
    let raw = transform::select_classes(raw, cfg.classes.as_deref(), cfg.groups.as_deref())?;
    let RawData { sample_shape, classes, mut train, mut test } = raw;
    if train.is_empty() || test.is_empty() {
        bail!("dataset '{}' has an empty split (train {}, test {})", cfg.dataset, train.len(), test.len());
    }
    if (cfg.modulus.is_some() || cfg.train_fraction.is_some()) && cfg.dataset != "modular-addition" {
        bail!("modulus and train_fraction apply to the modular-addition dataset only");
    }
    if cfg.dataset == "text" && (cfg.classes.is_some() || cfg.groups.is_some()) {
        bail!("classes and groups do not apply to the text dataset (its classes are the next characters)");
    }
    if cfg.context.is_some() && cfg.dataset != "text" {
        bail!("context applies to the text dataset only");
    }
    // Token ids are categories: never normalised.
    let vocab = match cfg.dataset.as_str() {
        "modular-addition" => Some(cfg.modulus.unwrap_or(synthetic::DEFAULT_MODULUS) + 1),
        "text" => Some(classes.len()),
        _ => None,
    };
    let normalisation = (cfg.normalize && vocab.is_none()).then(|| Normalisation::fit(&train, &sample_shape));
    if let Some(n) = &normalisation {
        n.apply(&mut train);
        n.apply(&mut test);
    }
    let fingerprint = fingerprint(&cfg.dataset, &classes, &train, &test);
    Ok(Dataset { name: cfg.dataset.clone(), sample_shape, classes, train, test, normalisation, fingerprint, vocab })
}

fn fingerprint(name: &str, classes: &[String], train: &Split, test: &Split) -> String {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    for c in classes {
        h.update(c.as_bytes());
        h.update([0]);
    }
    for s in [train, test] {
        h.update((s.len() as u64).to_le_bytes());
        if s.targets != 1 {
            h.update((s.targets as u64).to_le_bytes());
        }
        for v in &s.x {
            h.update(v.to_le_bytes());
        }
        for v in &s.y {
            h.update(v.to_le_bytes());
        }
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}
