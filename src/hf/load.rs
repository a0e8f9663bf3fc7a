//! The weights of one Hugging Face revision folder: `model.safetensors`,
//! shards listed by `model.safetensors.index.json` or
//! `pytorch_model.bin.index.json` (`weight_map`), or `pytorch_model.bin`;
//! every float type widened to f32. Names become the spec's: buffers that
//! old files carry (causal-mask `attention.bias`, `masked_bias`, rotary
//! `inv_freq`) are dropped, GPT-2 files without the `transformer.` prefix
//! get it, and GPT-2's `Conv1D` weights ([in, out]) are transposed, chosen
//! by `model_type`, never by shape.

use crate::checkpoint::{sha256_hex, Fingerprint};
use crate::spec::{Family, HfArch};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::Tensor;
use rayon::prelude::*;
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The weight files of a revision folder, in the order they are read.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    for index in ["model.safetensors.index.json", "pytorch_model.bin.index.json"] {
        let p = dir.join(index);
        if p.is_file() {
            return shards(&p);
        }
    }
    for single in ["model.safetensors", "pytorch_model.bin"] {
        let p = dir.join(single);
        if p.is_file() {
            return Ok(vec![p]);
        }
    }
    bail!(
        "{}: no weights (expected model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json)",
        dir.display()
    )
}

/// The shard files an index names, each once, checked to exist.
fn shards(index: &Path) -> Result<Vec<PathBuf>> {
    let inner = || -> Result<Vec<PathBuf>> {
        let text = std::fs::read_to_string(index).context("cannot read")?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow!("not valid JSON ({e})"))?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| anyhow!("no 'weight_map' object"))?;
        let mut files: Vec<String> = Vec::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| anyhow!("weight_map['{name}'] is not a file name"))?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                bail!("weight_map['{name}'] = '{file}' is not a file beside the index");
            }
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
        }
        files.sort();
        let dir = index.parent().unwrap_or(Path::new("."));
        files
            .into_iter()
            .map(|f| {
                let p = dir.join(&f);
                if p.is_file() {
                    Ok(p)
                } else {
                    bail!("names shard '{f}', which is missing")
                }
            })
            .collect()
    };
    inner().with_context(|| format!("{}", index.display()))
}

/// Whether `name` is a buffer that old checkpoints saved beside the
/// weights: the causal mask, its fill value and rotary frequencies.
fn is_junk_buffer(name: &str) -> bool {
    [".attention.bias", ".attention.masked_bias", ".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// Every float tensor of one safetensors file, widened to f32.
fn read_safetensors(path: &Path, out: &mut BTreeMap<String, Tensor>) -> Result<()> {
    let file = std::fs::File::open(path).context("cannot open")?;
    // SAFETY: read-only map, dropped before return; lintrace writes nothing here.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.context("cannot map")?;
    crate::checkpoint::unique_names(&mmap)?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| anyhow!("not a valid safetensors file ({e})"))?;
    for (name, view) in st.tensors() {
        // Before the dtype check: the causal-mask buffer is bool.
        if is_junk_buffer(&name) {
            continue;
        }
        let t = crate::checkpoint::f32_tensor(&name, &view)?;
        if out.insert(name.clone(), t).is_some() {
            bail!("tensor '{name}' is in two shards");
        }
    }
    Ok(())
}

/// The tensors of a revision folder under the spec's names, f32, [out, in].
pub fn read_weights(dir: &Path, arch: &HfArch) -> Result<BTreeMap<String, Tensor>> {
    let mut raw = BTreeMap::new();
    for file in weight_files(dir)? {
        let is_bin = file.extension().is_some_and(|e| e == "bin");
        let mut read = || -> Result<()> {
            if is_bin {
                // (Junk buffers are dropped with the names, in `normalise`.)
                for (name, t) in crate::interop::read_torch(&file)? {
                    if raw.insert(name.clone(), t).is_some() {
                        bail!("tensor '{name}' is in two shards");
                    }
                }
                Ok(())
            } else {
                read_safetensors(&file, &mut raw)
            }
        };
        read().with_context(|| format!("{}", file.display()))?;
    }
    normalise(raw, arch).with_context(|| format!("{}", dir.display()))
}

/// A file's tensor name under the spec's names (`None`: a tensor the spec
/// does not use, dropped), and whether it is a GPT-2 `Conv1D` weight,
/// stored [in, out].
fn spec_name(name: &str, arch: &HfArch) -> (Option<String>, bool) {
    if is_junk_buffer(name) {
        return (None, false);
    }
    let name = match arch.family {
        // OpenAI's GPT-2 files hold GPT2Model's names (`h.0.attn…`, `wte`).
        Family::Gpt2 if !name.starts_with("transformer.") && name != "lm_head.weight" => format!("transformer.{name}"),
        _ => name.to_string(),
    };
    // A tied head saved anyway is the embedding again.
    if arch.tied && name == format!("{}.weight", arch.head_name()) {
        return (None, false);
    }
    let conv1d = arch.family == Family::Gpt2 && is_conv1d_weight(&name);
    (Some(name), conv1d)
}

/// Hugging Face names and layouts onto the spec's.
fn normalise(raw: BTreeMap<String, Tensor>, arch: &HfArch) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (name, t) in raw {
        let (Some(name), conv1d) = spec_name(&name, arch) else { continue };
        let t = if conv1d {
            if t.rank() != 2 {
                bail!("tensor '{name}' has shape {:?}; GPT-2's Conv1D weights are matrices", t.dims());
            }
            t.t()?.contiguous()?
        } else {
            t
        };
        if out.insert(name.clone(), t).is_some() {
            bail!("tensor '{name}' appears twice (with and without the 'transformer.' prefix)");
        }
    }
    Ok(out)
}

/// Checks, from the safetensors headers alone, that a revision's tensors
/// are the ones `spec` (its config.json) describes: one line naming the
/// first tensor that is missing, extra or of another shape. (`.bin` files
/// are checked when they are loaded.)
pub fn check_shapes(dir: &Path, arch: &HfArch, spec: &crate::spec::ModelSpec) -> Result<()> {
    let mut found: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for file in weight_files(dir)? {
        if file.extension().is_some_and(|e| e == "bin") {
            return Ok(());
        }
        let bytes = std::fs::File::open(&file).and_then(|f| {
            // SAFETY: read-only map, dropped before return.
            unsafe { memmap2::Mmap::map(&f) }
        });
        let mmap = bytes.with_context(|| format!("{}: cannot read", file.display()))?;
        let (_, header) =
            SafeTensors::read_metadata(&mmap).map_err(|e| anyhow!("{}: not a valid safetensors file ({e})", file.display()))?;
        for (name, info) in header.tensors() {
            let (Some(name), conv1d) = spec_name(&name, arch) else { continue };
            let mut shape = info.shape.clone();
            if conv1d {
                shape.reverse();
            }
            found.insert(name, shape);
        }
    }
    let config = dir.join("config.json");
    for (name, shape) in spec.tensor_shapes() {
        match found.remove(&name) {
            None => bail!("{}: tensor '{name}' (shape {shape:?} by {}) is missing", dir.display(), config.display()),
            Some(s) if s != shape => {
                bail!("{}: tensor '{name}' has shape {s:?} but {} needs {shape:?}", dir.display(), config.display())
            }
            Some(_) => {}
        }
    }
    if let Some(name) = found.keys().next() {
        bail!(
            "{}: tensor '{name}' is not part of the model {} describes ({} unexpected tensors)",
            dir.display(),
            config.display(),
            found.len()
        );
    }
    Ok(())
}

/// GPT-2's `Conv1D` layers store their weight [in, out].
fn is_conv1d_weight(name: &str) -> bool {
    [".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"].iter().any(|s| name.ends_with(s))
}

/// A revision folder's fingerprint: the SHA-256 over its weight files'
/// hashes, and over the tensors of its safetensors files (name, dtype,
/// shape, bytes), so that the same weights under two revisions, or resharded,
/// are recognised. For `.bin` files the file hashes stand in for the
/// weights.
pub fn fingerprint(dir: &Path) -> Result<Fingerprint> {
    use sha2::{Digest, Sha256};
    let files = weight_files(dir)?;
    let mut whole = Sha256::new();
    let mut tensors: Vec<(String, String)> = Vec::new();
    for f in &files {
        // Mapped, not read: a revision's files are gigabytes, and the hashes
        // below only stream through them.
        let file = std::fs::File::open(f).with_context(|| format!("{}: cannot read", f.display()))?;
        // SAFETY: mapped read-only; a file rewritten while it is hashed
        // gives a fingerprint of neither version, as a read would.
        let bytes = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("{}: cannot map", f.display()))?;
        let bytes: &[u8] = &bytes;
        if f.extension().is_some_and(|e| e == "bin") {
            let h = sha256_hex(bytes);
            whole.update(h.as_bytes());
            tensors.push((f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), h));
            continue;
        }
        let st = SafeTensors::deserialize(bytes).map_err(|e| anyhow!("{}: not a valid safetensors file ({e})", f.display()))?;
        // The file's hash on one thread, its tensors' on the others.
        let (file_hash, mut per_tensor) = rayon::join(
            || sha256_hex(bytes),
            || {
                st.tensors()
                    .into_par_iter()
                    .map(|(name, view)| {
                        let mut h = Sha256::new();
                        h.update(format!("{:?}|{:?}|", view.dtype(), view.shape()).as_bytes());
                        h.update(view.data());
                        (name, h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>())
                    })
                    .collect::<Vec<_>>()
            },
        );
        whole.update(file_hash.as_bytes());
        tensors.append(&mut per_tensor);
    }
    tensors.sort();
    let mut w = Sha256::new();
    for (name, h) in &tensors {
        w.update(format!("{name}|{h}\n").as_bytes());
    }
    let hex = |h: Sha256| h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>();
    Ok(Fingerprint { file_sha256: hex(whole), weights_sha256: Some(hex(w)) })
}
