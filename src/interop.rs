//! Checkpoints written elsewhere: PyTorch's `torch.save` zip files
//! (`.pt`, `.pth`, `.bin`, `.ckpt`), and tensor names as PyTorch training
//! scripts leave them (DataParallel/DDP's `module.`, `torch.compile`'s
//! `_orig_mod.`, Lightning's `model.`, a bare `nn.Sequential`'s `0.weight`),
//! mapped onto a lintrace spec's names. No Python at run time: the pickle is
//! read by candle's reader, which only rebuilds dicts and tensors.

use crate::spec::ModelSpec;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Whether `bytes` start like a zip archive (torch.save's format since 1.6).
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// File names a checkpoint folder from elsewhere may hold.
pub fn is_checkpoint_name(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| ["safetensors", "pt", "pth", "bin", "ckpt"].contains(&e))
}

fn is_tensor(o: &Object) -> bool {
    matches!(o, Object::Reduce { callable, .. }
        if matches!(callable.as_ref(), Object::Class { module_name, class_name } if module_name == "torch._utils" && class_name.starts_with("_rebuild_tensor")))
}

fn key_text(o: &Object) -> Option<&str> {
    match o {
        Object::Unicode(s) => Some(s),
        _ => None,
    }
}

/// Where the state dict is in a torch.save pickle: the top level (None) or
/// under one key, as training scripts nest it.
fn locate_state_dict(obj: &Object) -> Result<Option<String>> {
    match obj {
        Object::Dict(kvs) => {
            if kvs.iter().any(|(_, v)| is_tensor(v)) {
                return Ok(None);
            }
            for key in ["state_dict", "model", "model_state_dict", "module", "net"] {
                let nested = kvs.iter().find(|(k, _)| key_text(k) == Some(key)).map(|(_, v)| v);
                if let Some(Object::Dict(inner)) = nested {
                    if inner.iter().any(|(_, v)| is_tensor(v)) {
                        return Ok(Some(key.to_string()));
                    }
                }
            }
            let keys: Vec<&str> = kvs.iter().filter_map(|(k, _)| key_text(k)).collect();
            if keys.contains(&"param_groups") && keys.contains(&"state") {
                bail!("holds an optimizer's state only (param_groups, state), not model weights");
            }
            bail!("holds no tensors at its top level nor under state_dict/model (keys: {})", keys.join(", "))
        }
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => {
            let class = match callable.as_ref() {
                Object::Class { module_name, class_name } => format!("{module_name}.{class_name}"),
                Object::Reduce { callable, .. } => match callable.as_ref() {
                    Object::Class { module_name, class_name } => format!("{module_name}.{class_name}"),
                    _ => "an object".into(),
                },
                _ => "an object".into(),
            };
            bail!("is a pickled {class}, not a state dict: save model.state_dict() instead of the model")
        }
        _ => bail!("is not a state dict"),
    }
}

/// Reads the tensors of a torch.save zip file as f32 (fp16/bf16 widened).
pub fn read_torch(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let file = std::fs::File::open(path).context("cannot open")?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| anyhow!("not a readable zip file ({e})"))?;
    let names: Vec<String> = zip.file_names().filter_map(|n| n.ok().map(|n| n.into_owned())).collect();
    let pkl =
        names.into_iter().find(|n| n.ends_with("data.pkl")).ok_or_else(|| anyhow!("a zip file without data.pkl: not a torch.save file"))?;
    let obj = {
        let reader = zip.by_name(&pkl).map_err(|e| anyhow!("cannot read {pkl} ({e})"))?;
        let mut reader = std::io::BufReader::new(reader);
        let mut stack = Stack::empty();
        stack.read_loop(&mut reader).map_err(|e| anyhow!("not a readable pickle ({e})"))?;
        stack.finalize().map_err(|e| anyhow!("not a readable pickle ({e})"))?
    };
    let key = locate_state_dict(&obj)?;
    let tensors = candle_core::pickle::read_all_with_key(path, key.as_deref()).map_err(|e| anyhow!("cannot read its tensors ({e})"))?;
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        let t = match t.dtype() {
            DType::F32 | DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
            // num_batches_tracked and other integer buffers carry no weights.
            _ => continue,
        };
        if out.insert(name.clone(), t).is_some() {
            bail!("tensor '{name}' appears twice");
        }
    }
    Ok(out)
}

/// Splits `layers.0.weight` into (`layers.0`, `weight`).
fn module_of(name: &str) -> (&str, &str) {
    name.rsplit_once('.').unwrap_or(("", name))
}

/// Maps the names of a checkpoint written elsewhere onto `spec`'s: first the
/// user's `renames` (prefix FROM → TO), then the wrappers every name carries
/// (`module.`, `_orig_mod.`, `model.`), then a bare `nn.Sequential`'s
/// indices in order onto the spec's layers. When the names still differ, the
/// error pairs expected and found names by shape and suggests `--rename`.
pub fn map_names(
    mut tensors: BTreeMap<String, Tensor>,
    spec: &ModelSpec,
    renames: &[(String, String)],
) -> Result<BTreeMap<String, Tensor>> {
    let expected: Vec<(String, Vec<usize>)> = spec.tensor_shapes();
    let want: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    for (from, to) in renames {
        tensors =
            tensors.into_iter().map(|(k, v)| (k.strip_prefix(from.as_str()).map_or(k.clone(), |rest| format!("{to}{rest}")), v)).collect();
    }
    'strip: loop {
        for wrapper in ["module.", "_orig_mod.", "model."] {
            if !tensors.is_empty() && tensors.keys().all(|k| k.starts_with(wrapper)) && !tensors.keys().all(|k| want.contains(k.as_str())) {
                tensors = tensors.into_iter().map(|(k, v)| (k[wrapper.len()..].to_string(), v)).collect();
                continue 'strip;
            }
        }
        break;
    }
    let all_bare = !tensors.is_empty() && tensors.keys().all(|k| module_of(k).0.parse::<usize>().is_ok());
    if all_bare && !tensors.keys().all(|k| want.contains(k.as_str())) {
        tensors = map_sequential(tensors, spec)?;
    }
    let found: BTreeSet<&str> = tensors.keys().map(String::as_str).collect();
    if want.iter().all(|n| found.contains(n)) {
        // Extra entries (buffers lintrace does not use) are dropped.
        tensors.retain(|k, _| want.contains(k.as_str()));
        return Ok(tensors);
    }
    Err(mismatch(&expected, &tensors))
}

/// A bare nn.Sequential's parameterised modules, in index order, onto the
/// spec's layers in order.
fn map_sequential(tensors: BTreeMap<String, Tensor>, spec: &ModelSpec) -> Result<BTreeMap<String, Tensor>> {
    let mut indices: Vec<usize> = tensors.keys().filter_map(|k| module_of(k).0.parse().ok()).collect();
    indices.sort();
    indices.dedup();
    let layers = spec.layers();
    if indices.len() != layers.len() {
        bail!(
            "a bare nn.Sequential with {} parameterised modules (indices {indices:?}) cannot map onto the spec's {} layers",
            indices.len(),
            layers.len()
        );
    }
    let target: BTreeMap<usize, &str> = indices.iter().copied().zip(layers.iter().map(|l| l.name.as_str())).collect();
    Ok(tensors
        .into_iter()
        .map(|(k, v)| {
            let (m, p) = module_of(&k);
            let idx: usize = m.parse().expect("checked: every name is bare");
            (format!("{}.{p}", target[&idx]), v)
        })
        .collect())
}

/// The error for names that do not match: expected ↔ found, paired by
/// shape in order, with the renames that would fix it.
fn mismatch(expected: &[(String, Vec<usize>)], found: &BTreeMap<String, Tensor>) -> anyhow::Error {
    let mut unused: Vec<(&String, Vec<usize>)> = found.iter().map(|(k, t)| (k, t.dims().to_vec())).collect();
    // Natural order: "fc10" after "fc9".
    unused.sort_by_key(|(k, _)| natural_key(k));
    let mut pairs = Vec::new();
    let mut renames = BTreeSet::new();
    let mut same = 0;
    for (name, shape) in expected {
        // A tensor of the same name and shape first, else the next unused
        // one of that shape and kind (weight, bias).
        let hit = unused
            .iter()
            .position(|(k, s)| *k == name && s == shape)
            .or_else(|| unused.iter().position(|(k, s)| s == shape && module_of(k).1 == module_of(name).1));
        match hit {
            Some(i) => {
                let (k, _) = unused.remove(i);
                if k == name {
                    same += 1;
                    continue;
                }
                renames.insert(format!("--rename {}={}", module_of(k).0, module_of(name).0));
                pairs.push(format!("{name} ↔ {k}"));
            }
            None => pairs.push(format!("{name} ↔ (none of shape {shape:?})")),
        }
    }
    let extra: Vec<&str> = unused.iter().map(|(k, _)| k.as_str()).collect();
    let mut msg =
        format!("tensor names do not match the spec ({same} of {} match; expected ↔ found: {})", expected.len(), pairs.join(", "));
    if !extra.is_empty() {
        msg.push_str(&format!("; not used: {}", extra.join(", ")));
    }
    if !renames.is_empty() && !pairs.iter().any(|p| p.contains("(none")) {
        msg.push_str(&format!("; try {}", renames.into_iter().collect::<Vec<_>>().join(" ")));
    }
    anyhow!(msg)
}

fn natural_key(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut num: Option<u64> = None;
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            num = Some(num.unwrap_or(0).saturating_mul(10).saturating_add(d as u64));
        } else {
            if let Some(n) = num.take() {
                out.push((std::mem::take(&mut text), n));
            }
            text.push(c);
        }
    }
    out.push((text, num.unwrap_or(0)));
    out
}

/// The step a checkpoint from elsewhere holds, from its path relative to
/// the checkpoint folder (`checkpoint-500/pytorch_model.bin`,
/// `epoch=3-step=1200.ckpt`). With `pattern`, its first capture group (or
/// whole match); by default `step` followed by digits, else the last digits.
pub fn step_from_name(rel: &str, pattern: Option<&regex::Regex>) -> Option<u64> {
    if let Some(re) = pattern {
        let c = re.captures(rel)?;
        return c.get(1).or_else(|| c.get(0))?.as_str().parse().ok();
    }
    static STEP: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = STEP.get_or_init(|| regex::Regex::new(r"(?i)step[=_-]?(\d+)").expect("valid regex"));
    if let Some(c) = re.captures_iter(rel).last() {
        return c.get(1)?.as_str().parse().ok();
    }
    let stem = rel.rsplit_once('.').map_or(rel, |(s, _)| s);
    let digits: String = stem.chars().rev().skip_while(|c| !c.is_ascii_digit()).take_while(|c| c.is_ascii_digit()).collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

/// Checkpoint files under a folder from elsewhere: model files directly in
/// it, and one model file inside each subfolder (`checkpoint-500/`), as
/// Hugging Face's Trainer writes them.
pub fn list_foreign(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("{}: cannot read checkpoint folder", dir.display()))?;
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_file() && is_checkpoint_name(&p) {
            files.push(p);
        } else if p.is_dir() && p.file_name().is_some_and(|n| n != crate::run::ANALYSIS) {
            let inner: Vec<std::path::PathBuf> = std::fs::read_dir(&p)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|q| q.is_file() && is_checkpoint_name(q))
                .collect();
            let preferred = ["model.safetensors", "pytorch_model.bin"];
            let pick = preferred
                .iter()
                .find_map(|n| inner.iter().find(|q| q.file_name().is_some_and(|f| f == *n)))
                .or(if inner.len() == 1 { inner.first() } else { None });
            if let Some(q) = pick {
                files.push(q.clone());
            }
        }
    }
    files.sort();
    Ok(files)
}
