//! Safetensors checkpoints. A lintrace checkpoint is a plain safetensors file
//! (loadable with `safetensors.torch.load_file`) whose `__metadata__` carries
//! the model spec, run id, step, epoch and samples seen, so the file alone
//! rebuilds its model. Files written elsewhere (PyTorch) load with a spec
//! given on the command line.

use crate::atomic::write_atomic;
use crate::model::{build, Model};
use crate::spec::ModelSpec;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "lintrace.checkpoint";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMeta {
    pub spec: ModelSpec,
    pub run_id: String,
    pub step: u64,
    /// Fractional epochs: samples seen / training-set size.
    pub epoch: f64,
    pub samples_seen: u64,
}

impl CheckpointMeta {
    fn to_metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            ("format".into(), FORMAT.into()),
            ("format_version".into(), FORMAT_VERSION.to_string()),
            ("spec".into(), self.spec.to_json()),
            ("run_id".into(), self.run_id.clone()),
            ("step".into(), self.step.to_string()),
            ("epoch".into(), self.epoch.to_string()),
            ("samples_seen".into(), self.samples_seen.to_string()),
            ("lintrace_version".into(), env!("CARGO_PKG_VERSION").into()),
        ])
    }

    fn from_metadata(md: &HashMap<String, String>) -> Result<Self> {
        let get = |k: &str| md.get(k).ok_or_else(|| anyhow!("metadata key '{k}' is missing"));
        let version: u32 = get("format_version")?.parse().context("format_version is not a number")?;
        if version != FORMAT_VERSION {
            bail!("checkpoint format_version {version} is not supported (this lintrace reads {FORMAT_VERSION})");
        }
        Ok(CheckpointMeta {
            spec: ModelSpec::from_json(get("spec")?).map_err(|e| anyhow!("metadata 'spec': {e}"))?,
            run_id: get("run_id")?.clone(),
            step: get("step")?.parse().context("metadata 'step' is not an integer")?,
            epoch: get("epoch")?.parse().context("metadata 'epoch' is not a number")?,
            samples_seen: get("samples_seen")?.parse().context("metadata 'samples_seen' is not an integer")?,
        })
    }
}

/// `checkpoints/step_00000042.safetensors`
pub fn file_name(step: u64) -> String {
    format!("step_{step:08}.safetensors")
}

/// The step encoded in a checkpoint file name, if it is one of ours.
pub fn step_from_file_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("step_")?.strip_suffix(".safetensors")?.parse().ok()
}

/// Writes named f32 tensors with lintrace metadata, atomically; returns the
/// file's SHA-256 (hex), which the run manifest records.
pub fn save(path: &Path, meta: &CheckpointMeta, tensors: &[(String, Tensor)]) -> Result<String> {
    let data = tensors.iter().map(|(name, t)| f32_entry(name, t)).collect::<Result<Vec<_>>>()?;
    save_raw(path, meta, &data)
}

/// [`save`] plus BatchNorm's `num_batches_tracked` counters, as int64
/// scalars the way PyTorch stores them, so that `model.load_state_dict`
/// accepts the file strictly. (lintrace itself skips them when loading.)
pub fn save_with_counters(path: &Path, meta: &CheckpointMeta, tensors: &[(String, Tensor)], counters: &[(String, i64)]) -> Result<String> {
    let data = tensors.iter().map(|(name, t)| f32_entry(name, t)).collect::<Result<Vec<_>>>()?;
    write_safetensors(path, &data, counters, meta.to_metadata())
}

/// BatchNorm's step counter: saved for PyTorch, never loaded as a weight.
pub fn is_counter(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
}

/// (name, shape, little-endian f32 bytes) of a tensor, as safetensors stores it.
pub fn f32_entry(name: &str, t: &Tensor) -> Result<(String, Vec<usize>, Vec<u8>)> {
    let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok((name.to_string(), t.dims().to_vec(), values.iter().flat_map(|v| v.to_le_bytes()).collect()))
}

/// Writes (name, shape, little-endian f32 bytes) with lintrace metadata;
/// returns the file's SHA-256 (hex).
pub fn save_raw(path: &Path, meta: &CheckpointMeta, data: &[(String, Vec<usize>, Vec<u8>)]) -> Result<String> {
    write_f32_safetensors(path, data, meta.to_metadata())
}

/// Writes f32 entries and string metadata as a safetensors file with a
/// canonical (sorted) header, atomically: checkpoints and train state.
/// Returns the SHA-256 (hex) of the bytes written.
pub fn write_f32_safetensors(path: &Path, data: &[(String, Vec<usize>, Vec<u8>)], metadata: HashMap<String, String>) -> Result<String> {
    write_safetensors(path, data, &[], metadata)
}

/// f32 entries plus int64 scalars (`counters`), with a canonical header.
fn write_safetensors(
    path: &Path,
    data: &[(String, Vec<usize>, Vec<u8>)],
    counters: &[(String, i64)],
    metadata: HashMap<String, String>,
) -> Result<String> {
    let ints: Vec<(&str, [u8; 8])> = counters.iter().map(|(n, v)| (n.as_str(), v.to_le_bytes())).collect();
    let mut views =
        data.iter().map(|(n, s, b)| Ok((n.as_str(), TensorView::new(Dtype::F32, s.clone(), b)?))).collect::<Result<Vec<_>>>()?;
    for (n, b) in &ints {
        views.push((n, TensorView::new(Dtype::I64, vec![], b)?));
    }
    let bytes =
        canonical_header(safetensors::serialize(views, Some(metadata)).with_context(|| format!("{}: cannot serialise", path.display()))?)?;
    write_atomic(path, &bytes)?;
    Ok(sha256_hex(&bytes))
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// What identifies a checkpoint file: the SHA-256 of its bytes (what
/// run.json records) and of its weights alone — tensor names, dtypes, shapes
/// and values, not the metadata — which is equal for two files holding the
/// same weights under different steps or runs (aliased checkpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub file_sha256: String,
    /// None when the file is not a readable safetensors file (the loader
    /// then says why).
    pub weights_sha256: Option<String>,
}

/// Reads `path` once and fingerprints it.
pub fn fingerprint(path: &Path) -> Result<Fingerprint> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(Fingerprint { file_sha256: sha256_hex(&bytes), weights_sha256: weights_sha256(&bytes) })
}

/// SHA-256 over (name, dtype, shape, bytes) of every tensor, in name order.
fn weights_sha256(bytes: &[u8]) -> Option<String> {
    use sha2::{Digest, Sha256};
    let st = SafeTensors::deserialize(bytes).ok()?;
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (name, view) in tensors.into_iter().filter(|(n, _)| !is_counter(n)) {
        // (A step counter differs between steps even when the weights do not.)
        h.update(format!("{name}|{:?}|{:?}|{}\n", view.dtype(), view.shape(), view.data().len()).as_bytes());
        h.update(view.data());
    }
    Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Refuses a header that names a tensor twice. JSON parsers keep one of the
/// two silently (which one differs between readers), so the same file could
/// mean different weights in lintrace and in PyTorch.
pub fn unique_names(bytes: &[u8]) -> Result<()> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Option<String>, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut dup = None;
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if !seen.insert(k.clone()) && dup.is_none() {
                    dup = Some(k);
                }
            }
            Ok(dup)
        }
    }
    let n = u64::from_le_bytes(
        bytes.get(..8).ok_or_else(|| anyhow!("not a valid safetensors file (shorter than its 8-byte header length)"))?.try_into()?,
    ) as usize;
    let header = bytes
        .get(8..8usize.saturating_add(n))
        .ok_or_else(|| anyhow!("not a valid safetensors file (its header length {n} runs past the end of the file)"))?;
    let dup = serde_json::Deserializer::from_slice(header)
        .deserialize_map(Keys)
        .map_err(|e| anyhow!("not a valid safetensors file (header: {e})"))?;
    if let Some(name) = dup {
        bail!("not a valid safetensors file: tensor name '{name}' appears twice in the header");
    }
    Ok(())
}

/// Checks a fingerprint against the SHA-256 recorded when the file was written.
pub fn check_recorded(path: &Path, fp: &Fingerprint, expected: &str) -> Result<()> {
    if fp.file_sha256 != expected {
        bail!(
            "{}: SHA-256 {} differs from the {} recorded in run.json when it was written: the file was changed or is corrupt; it is not analysed",
            path.display(),
            &fp.file_sha256[..16],
            &expected[..expected.len().min(16)]
        );
    }
    Ok(())
}

/// Checks a checkpoint file against the SHA-256 recorded when it was
/// written: one read of the file.
pub fn verify(path: &Path, expected: &str) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    check_recorded(path, &Fingerprint { file_sha256: sha256_hex(&bytes), weights_sha256: None }, expected)
}

/// Rewrites a safetensors header with sorted keys. `serialize` takes the
/// metadata as a HashMap, whose order changes from process to process;
/// sorting makes equal checkpoints byte-identical (deterministic training is
/// tested byte for byte). Data offsets are relative to the end of the
/// header, so only the length prefix changes.
pub fn canonical_header(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])?;
    let mut text = sorted_json(&header);
    // The format pads the header with spaces to a multiple of 8 bytes.
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(bytes.len() + 8);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

fn sorted_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let items: Vec<String> =
                keys.iter().map(|k| format!("{}:{}", serde_json::Value::String((*k).clone()), sorted_json(&map[*k]))).collect();
            format!("{{{}}}", items.join(","))
        }
        other => other.to_string(),
    }
}

/// A checkpoint opened from disk: its metadata (when it has lintrace's) and
/// its tensors, memory-mapped and then copied onto the device.
pub struct Loaded {
    pub path: PathBuf,
    pub meta: CheckpointMeta,
    pub tensors: BTreeMap<String, Tensor>,
}

impl Loaded {
    /// The first tensor holding NaN or ±Inf, with how many such values:
    /// such weights (a diverged run) are refused, not analysed into
    /// meaningless numbers.
    pub fn non_finite(&self) -> Result<Option<(String, usize)>> {
        for (name, t) in &self.tensors {
            let values: Vec<f32> = t.flatten_all()?.to_vec1()?;
            let bad = values.iter().filter(|v| !v.is_finite()).count();
            if bad > 0 {
                return Ok(Some((name.clone(), bad)));
            }
        }
        Ok(None)
    }

    pub fn model(&self, device: &Device) -> Result<Model> {
        build(&self.meta.spec, self.tensors.clone(), device)
            .with_context(|| format!("{}: does not match its model spec", self.path.display()))
    }
}

/// A safetensors tensor of any float type as an f32 tensor on the CPU
/// (fp16/bf16/f64 widened or rounded); other dtypes are refused, naming it.
pub fn f32_tensor(name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Tensor> {
    let dtype = match view.dtype() {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        other => bail!("tensor '{name}' has dtype {other:?}; expected a float type"),
    };
    Ok(Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
        .with_context(|| format!("tensor '{name}'"))?
        .to_dtype(DType::F32)?)
}

/// Opens a checkpoint. `fallback` supplies the spec, run identity and step
/// for files without lintrace metadata (e.g. PyTorch-trained weights); a
/// checkpoint with its own metadata uses its own spec. Every error names the
/// file.
pub fn load(path: &Path, fallback: Option<&CheckpointMeta>) -> Result<Loaded> {
    load_foreign(path, fallback, &[])
}

/// [`load`] for checkpoints from elsewhere: also PyTorch's torch.save zip
/// files, and names mapped onto the spec's (`renames` first, then the
/// wrappers PyTorch leaves; see `interop::map_names`).
pub fn load_foreign(path: &Path, fallback: Option<&CheckpointMeta>, renames: &[(String, String)]) -> Result<Loaded> {
    load_inner(path, fallback, renames).with_context(|| format!("{}", path.display()))
}

fn load_inner(path: &Path, fallback: Option<&CheckpointMeta>, renames: &[(String, String)]) -> Result<Loaded> {
    let mut head = [0u8; 4];
    let is_zip = std::io::Read::read(&mut std::fs::File::open(path).context("cannot open")?, &mut head).is_ok_and(|n| n == 4)
        && crate::interop::is_zip(&head);
    if is_zip {
        let meta = fallback
            .cloned()
            .ok_or_else(|| anyhow!("a PyTorch (torch.save) file has no lintrace metadata: pass --spec (and --probe) to analyse it"))?;
        let tensors = crate::interop::map_names(crate::interop::read_torch(path)?, &meta.spec, renames)?;
        return Ok(Loaded { path: path.to_path_buf(), meta, tensors });
    }
    let file = std::fs::File::open(path).context("cannot open")?;
    // SAFETY: the map is read-only and dropped before this function returns;
    // lintrace never writes a checkpoint in place (writes are atomic renames).
    let mmap = unsafe { memmap2::Mmap::map(&file) }.context("cannot map")?;
    unique_names(&mmap)?;
    let (_, header) = SafeTensors::read_metadata(&mmap).map_err(|e| anyhow!("not a valid safetensors file ({e})"))?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| anyhow!("not a valid safetensors file ({e})"))?;
    let md = header.metadata().clone().unwrap_or_default();
    let own = md.get("format").map(String::as_str) == Some(FORMAT);
    let meta = if own {
        CheckpointMeta::from_metadata(&md)?
    } else if let Some(fb) = fallback {
        fb.clone()
    } else {
        bail!("has no lintrace metadata: pass --spec (and --probe) to analyse checkpoints written elsewhere")
    };
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        // BatchNorm's step counter, saved beside the weights.
        if is_counter(&name) {
            continue;
        }
        let t = f32_tensor(&name, &view)?;
        tensors.insert(name, t);
    }
    if !own {
        tensors = crate::interop::map_names(tensors, &meta.spec, renames)?;
    }
    Ok(Loaded { path: path.to_path_buf(), meta, tensors })
}

/// The checkpoint files of a folder, sorted by step; files that are not
/// `step_*.safetensors` are ignored, except with `any_name` (a bare folder of
/// foreign checkpoints, sorted by name).
pub fn list(dir: &Path, any_name: bool) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot read checkpoint folder", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .filter(|p| any_name || step_from_file_name(p).is_some())
        .collect();
    files.sort_by_key(|p| (step_from_file_name(p), p.clone()));
    Ok(files)
}
