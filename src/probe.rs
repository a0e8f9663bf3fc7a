//! The probe batch (docs/metrics.md, "The probe batch"): `n` held-out samples drawn
//! once per run with a seeded, class-stratified draw, stored with their
//! dataset indices and a content hash. Every checkpoint is analysed on
//! exactly these samples, in this order.

use crate::atomic::write_atomic;
use crate::data::Split;
use anyhow::{anyhow, bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

pub const FORMAT: &str = "lintrace.probe";

#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Model inputs (already normalised), [n, *sample_shape], row-major.
    pub inputs: Vec<f32>,
    pub sample_shape: Vec<usize>,
    pub labels: Vec<i64>,
    /// Index of each sample in its split.
    pub indices: Vec<i64>,
    pub hash: String,
    pub dataset: String,
    pub split: String,
}

impl Probe {
    /// Samples (windows, for a language model).
    pub fn len(&self) -> usize {
        self.indices.len()
    }
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
    /// Labels per sample: 1, or a language model's one per position.
    pub fn targets(&self) -> usize {
        self.labels.len() / self.len().max(1)
    }
    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }
}

/// First 16 hex digits of sha256(inputs as f32 LE ‖ labels as i64 LE).
pub fn content_hash(inputs: &[f32], labels: &[i64]) -> String {
    let mut h = Sha256::new();
    for v in inputs {
        h.update(v.to_le_bytes());
    }
    for v in labels {
        h.update(v.to_le_bytes());
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Draws `n` samples of `split`, stratified by class: each class gets its
/// share of `n` (largest remainders break ties), chosen uniformly with a
/// ChaCha stream seeded by `seed`; the result is in dataset-index order.
/// A language-modelling split (a label per position) has no class per
/// sample: its `n` windows are drawn uniformly.
pub fn draw(split: &Split, sample_shape: &[usize], n: usize, seed: u64, dataset: &str, split_name: &str) -> Probe {
    let n = n.min(split.len());
    let chosen = if split.targets > 1 { uniform(split.len(), n, seed) } else { stratified(split, n, seed) };
    let d = split.sample_len;
    let mut inputs = Vec::with_capacity(chosen.len() * d);
    for &i in &chosen {
        inputs.extend_from_slice(&split.x[i * d..(i + 1) * d]);
    }
    let labels: Vec<i64> = chosen.iter().flat_map(|&i| split.labels(i).iter().map(|&y| y as i64)).collect();
    Probe {
        hash: content_hash(&inputs, &labels),
        inputs,
        sample_shape: sample_shape.to_vec(),
        labels,
        indices: chosen.iter().map(|&i| i as i64).collect(),
        dataset: dataset.to_string(),
        split: split_name.to_string(),
    }
}

fn uniform(total: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut all: Vec<usize> = (0..total).collect();
    all.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    all.truncate(n);
    all.sort_unstable();
    all
}

fn stratified(split: &Split, n: usize, seed: u64) -> Vec<usize> {
    let total = split.len();
    let mut by_class: Vec<Vec<usize>> = Vec::new();
    for (i, &y) in split.y.iter().enumerate() {
        let y = y as usize;
        if by_class.len() <= y {
            by_class.resize(y + 1, Vec::new());
        }
        by_class[y].push(i);
    }
    let mut quota: Vec<usize> = by_class.iter().map(|c| c.len() * n / total.max(1)).collect();
    let mut short = n - quota.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..by_class.len()).collect();
    // Largest fractional share first; class index breaks ties.
    order.sort_by_key(|&c| (std::cmp::Reverse((by_class[c].len() * n) % total.max(1)), c));
    for &c in order.iter().cycle().take(by_class.len() * 2) {
        if short == 0 {
            break;
        }
        if quota[c] < by_class[c].len() {
            quota[c] += 1;
            short -= 1;
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut chosen: Vec<usize> = Vec::with_capacity(n);
    for (members, &q) in by_class.iter().zip(&quota) {
        let mut m = members.clone();
        m.shuffle(&mut rng);
        chosen.extend_from_slice(&m[..q]);
    }
    chosen.sort_unstable();
    chosen
}

pub fn save(path: &Path, probe: &Probe) -> Result<()> {
    let n = probe.len();
    let mut shape = vec![n];
    shape.extend_from_slice(&probe.sample_shape);
    let x: Vec<u8> = probe.inputs.iter().flat_map(|v| v.to_le_bytes()).collect();
    let y: Vec<u8> = probe.labels.iter().flat_map(|v| v.to_le_bytes()).collect();
    let idx: Vec<u8> = probe.indices.iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = vec![
        ("inputs", TensorView::new(Dtype::F32, shape, &x)?),
        ("labels", TensorView::new(Dtype::I64, if probe.targets() > 1 { vec![n, probe.targets()] } else { vec![n] }, &y)?),
        ("indices", TensorView::new(Dtype::I64, vec![n], &idx)?),
    ];
    let md = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("format_version".to_string(), "1".to_string()),
        ("hash".to_string(), probe.hash.clone()),
        ("dataset".to_string(), probe.dataset.clone()),
        ("split".to_string(), probe.split.clone()),
        ("n".to_string(), n.to_string()),
    ]);
    let bytes = safetensors::serialize(views, Some(md))?;
    write_atomic(path, &crate::checkpoint::canonical_header(bytes)?)
}

/// Reads a probe and checks its hash against its content.
pub fn load(path: &Path) -> Result<Probe> {
    load_inner(path).with_context(|| format!("{}", path.display()))
}

fn load_inner(path: &Path) -> Result<Probe> {
    let bytes = std::fs::read(path).context("cannot read probe")?;
    crate::checkpoint::unique_names(&bytes)?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("not a valid safetensors file ({e})"))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("not a valid safetensors file ({e})"))?;
    let md = header.metadata().clone().unwrap_or_default();
    let x = st.tensor("inputs").map_err(|_| anyhow!("probe tensor 'inputs' is missing"))?;
    let y = st.tensor("labels").map_err(|_| anyhow!("probe tensor 'labels' is missing"))?;
    let inputs: Vec<f32> = match x.dtype() {
        Dtype::F32 => x.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        // Token ids, as Python writes them (int64): kept as f32, which holds
        // every id below 2^24 exactly.
        Dtype::I64 | Dtype::I32 => {
            let ids = read_ints(&x, "inputs")?;
            if let Some(bad) = ids.iter().find(|&&v| !(0..1 << 24).contains(&v)) {
                bail!("probe 'inputs' holds {bad}, which is not a token id below 2^24");
            }
            ids.into_iter().map(|v| v as f32).collect()
        }
        other => bail!("probe 'inputs' must be float32 (or int64 token ids), got {other:?}"),
    };
    if let Some(i) = inputs.iter().position(|v| !v.is_finite()) {
        bail!("probe input value {i} is not finite ({}): the probe must be finite data", inputs[i]);
    }
    let labels = read_ints(&y, "labels")?;
    let n = x.shape().first().copied().unwrap_or(0);
    // [n] labels, or a language model's [n, positions].
    if y.shape().first() != Some(&n) {
        bail!("probe has {n} inputs but {} labels", y.shape().first().copied().unwrap_or(0));
    }
    if y.shape().len() > 2 {
        bail!("probe labels must be [n] or a language model's [n, positions], got shape {:?}", y.shape());
    }
    let indices = match st.tensor("indices") {
        Ok(v) => read_ints(&v, "indices")?,
        Err(_) => (0..n as i64).collect(),
    };
    let hash = content_hash(&inputs, &labels);
    if let Some(stored) = md.get("hash") {
        if *stored != hash {
            bail!("probe content hash {hash} does not match its recorded hash {stored} (file modified or corrupt)");
        }
    }
    Ok(Probe {
        inputs,
        sample_shape: x.shape()[1..].to_vec(),
        labels,
        indices,
        hash,
        dataset: md.get("dataset").cloned().unwrap_or_else(|| "unknown".into()),
        split: md.get("split").cloned().unwrap_or_else(|| "unknown".into()),
    })
}

fn read_ints(v: &TensorView<'_>, name: &str) -> Result<Vec<i64>> {
    let d = v.data();
    Ok(match v.dtype() {
        Dtype::I64 => d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::I32 => d.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        Dtype::U8 => d.iter().map(|&b| b as i64).collect(),
        other => bail!("probe '{name}' must be an integer tensor, got {other:?}"),
    })
}
