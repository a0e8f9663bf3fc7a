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
            let keys: Vec<String> = keys.iter().map(|k| k.escape_debug().to_string()).collect();
            bail!("holds no tensors at its top level nor under state_dict/model (keys: {})", keys.join(", "))
        }
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => {
            let class = match callable.as_ref() {
                Object::Class { module_name, class_name } => format!("{}.{}", module_name.escape_debug(), class_name.escape_debug()),
                Object::Reduce { callable, .. } => match callable.as_ref() {
                    Object::Class { module_name, class_name } => format!("{}.{}", module_name.escape_debug(), class_name.escape_debug()),
                    _ => "an object".into(),
                },
                _ => "an object".into(),
            };
            bail!("is a pickled {class}, not a state dict: save model.state_dict() instead of the model")
        }
        _ => bail!("is not a state dict"),
    }
}

/// How deep a torch.save pickle may nest objects. A state dict is about 6
/// deep; candle's reader clones and drops objects recursively, so an absurdly
/// nested pickle would overflow the stack.
const MAX_PICKLE_DEPTH: usize = 100;

/// The first line of an error from zip or candle, at most 300 characters
/// long: an error names the problem in one line.
fn one_line(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or("").trim();
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

/// A candle error's message without the backtrace candle attaches when
/// RUST_BACKTRACE is set (printing it would resolve symbols: megabytes).
fn candle_line(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_line(*inner),
        e => one_line(e),
    }
}

/// Walks a pickle the way candle's `Stack` reads it, without building
/// anything, and refuses what would make that reader allocate beyond the
/// pickle's size, recurse without bound or fail with a dump of an object in
/// its message: a string longer than what follows it, objects nested deeper
/// than [`MAX_PICKLE_DEPTH`], memo copies (candle clones an object on every
/// memo put and get) adding up to more than a few times the pickle's size,
/// an integer candle would shift out of range, and appends or item sets on
/// what is not a list or dict.
fn check_pickle(bytes: &[u8]) -> Result<()> {
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Mark,
        List,
        Dict,
        /// `collections.OrderedDict` or `defaultdict`, which candle's REDUCE turns into a dict.
        DictClass,
        Other,
    }
    #[derive(Clone, Copy)]
    struct Obj {
        depth: usize,
        size: usize,
        kind: Kind,
    }
    let leaf = |size: usize, kind: Kind| Obj { depth: 1, size, kind };
    let wrap = |objs: &[Obj], kind: Kind| Obj {
        depth: 1 + objs.iter().map(|o| o.depth).max().unwrap_or(0),
        size: objs.iter().fold(1usize, |a, o| a.saturating_add(o.size)),
        kind,
    };
    let budget = bytes.len().saturating_mul(4).saturating_add(4096);
    let mut copied = 0usize;
    let mut stack: Vec<Obj> = Vec::new();
    let mut memo: std::collections::HashMap<u32, Obj> = std::collections::HashMap::new();
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Result<&[u8]> {
        let end = at.checked_add(n).filter(|&e| e <= bytes.len()).ok_or_else(|| anyhow!("ends in the middle of an instruction"))?;
        let out = &bytes[*at..end];
        *at = end;
        Ok(out)
    };
    let pop_n = |stack: &mut Vec<Obj>, n: usize| -> Result<Vec<Obj>> {
        if stack.len() < n {
            bail!("takes from an empty stack");
        }
        Ok(stack.split_off(stack.len() - n))
    };
    let pop_to_mark = |stack: &mut Vec<Obj>| -> Result<Vec<Obj>> {
        let i = stack.iter().rposition(|o| o.kind == Kind::Mark).ok_or_else(|| anyhow!("has no mark where one is needed"))?;
        let objs = stack.split_off(i + 1);
        stack.pop();
        Ok(objs)
    };
    // APPEND(S) and SETITEM(S) add to the list or dict below what they take.
    let add_to = |stack: &mut Vec<Obj>, objs: &[Obj], kind: Kind| -> Result<()> {
        let last = stack.last_mut().ok_or_else(|| anyhow!("adds to an empty stack"))?;
        if last.kind != kind {
            bail!("adds items to something that is not a {}", if kind == Kind::List { "list" } else { "dict" });
        }
        let grown = wrap(objs, kind);
        *last = Obj { depth: last.depth.max(grown.depth), size: last.size.saturating_add(grown.size), kind };
        Ok(())
    };
    loop {
        let op = take(&mut at, 1)?[0];
        match op {
            0x80 => {
                take(&mut at, 1)?;
            }
            b'c' => {
                let mut parts = [&[][..]; 2];
                for part in &mut parts {
                    let rest = &bytes[at..];
                    let len = rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |i| i + 1);
                    *part = take(&mut at, len)?;
                }
                let trim = |p: &[u8]| String::from_utf8_lossy(p).trim_end_matches(['\n', '\r']).to_string();
                let (module, class) = (trim(parts[0]), trim(parts[1]));
                let kind = if module == "collections" && (class == "OrderedDict" || class == "defaultdict") {
                    Kind::DictClass
                } else {
                    Kind::Other
                };
                stack.push(leaf(1 + parts[0].len() + parts[1].len(), kind));
            }
            b'K' | b'M' | b'J' | b'G' => {
                take(&mut at, [1, 2, 4, 8][[b'K', b'M', b'J', b'G'].iter().position(|&c| c == op).unwrap()])?;
                stack.push(leaf(1, Kind::Other));
            }
            b'X' => {
                let len = u32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap()) as usize;
                if len > bytes.len() - at {
                    bail!("has a string of {len} bytes where {} remain", bytes.len() - at);
                }
                take(&mut at, len)?;
                stack.push(leaf(1 + len, Kind::Other));
            }
            0x8a => {
                let n = take(&mut at, 1)?[0] as usize;
                // candle shifts each byte into an i64: more than 8 overflow.
                if n > 8 {
                    bail!("has an integer of {n} bytes (LONG1), more than 8");
                }
                take(&mut at, n)?;
                stack.push(leaf(1, Kind::Other));
            }
            b'N' | 0x88 | 0x89 | b')' => stack.push(leaf(1, Kind::Other)),
            // candle reads DICT ('d') as an empty dict, as it does EMPTY_DICT.
            b'}' | b'd' => stack.push(leaf(1, Kind::Dict)),
            b']' => stack.push(leaf(1, Kind::List)),
            b'(' => stack.push(leaf(1, Kind::Mark)),
            b'Q' => {
                let objs = pop_n(&mut stack, 1)?;
                stack.push(wrap(&objs, Kind::Other));
            }
            b't' => {
                let objs = pop_to_mark(&mut stack)?;
                stack.push(wrap(&objs, Kind::Other));
            }
            0x85..=0x87 => {
                let objs = pop_n(&mut stack, (op - 0x84) as usize)?;
                stack.push(wrap(&objs, Kind::Other));
            }
            b'R' => {
                let objs = pop_n(&mut stack, 2)?;
                let kind = if objs[0].kind == Kind::DictClass { Kind::Dict } else { Kind::Other };
                stack.push(wrap(&objs, kind));
            }
            b'b' => {
                let objs = pop_n(&mut stack, 2)?;
                let kind = if objs[0].kind == Kind::Dict && objs[1].kind == Kind::Dict { Kind::Dict } else { Kind::Other };
                stack.push(wrap(&objs, kind));
            }
            0x81 => {
                let objs = pop_n(&mut stack, 2)?;
                stack.push(wrap(&objs, Kind::Other));
            }
            b'a' => {
                let objs = pop_n(&mut stack, 1)?;
                add_to(&mut stack, &objs, Kind::List)?;
            }
            b'e' => {
                let objs = pop_to_mark(&mut stack)?;
                add_to(&mut stack, &objs, Kind::List)?;
            }
            b's' => {
                let objs = pop_n(&mut stack, 2)?;
                add_to(&mut stack, &objs, Kind::Dict)?;
            }
            b'u' => {
                let objs = pop_to_mark(&mut stack)?;
                if objs.len() % 2 != 0 {
                    bail!("sets items from an odd number of objects");
                }
                add_to(&mut stack, &objs, Kind::Dict)?;
            }
            b'h' | b'j' => {
                let id = if op == b'h' { take(&mut at, 1)?[0] as u32 } else { u32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap()) };
                let obj = *memo.get(&id).ok_or_else(|| anyhow!("reads memo entry {id}, which was never written"))?;
                copied = copied.saturating_add(obj.size);
                stack.push(obj);
            }
            b'q' | b'r' => {
                let id = if op == b'q' { take(&mut at, 1)?[0] as u32 } else { u32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap()) };
                let obj = *stack.last().ok_or_else(|| anyhow!("memoizes from an empty stack"))?;
                copied = copied.saturating_add(obj.size);
                memo.insert(id, obj);
            }
            b'.' => return Ok(()),
            other => bail!("has an instruction this reader does not know (0x{other:02x})"),
        }
        if stack.last().is_some_and(|o| o.depth > MAX_PICKLE_DEPTH) {
            bail!("nests objects more than {MAX_PICKLE_DEPTH} deep");
        }
        if copied > budget {
            bail!("copies memoized objects beyond {budget} units (more than its size justifies)");
        }
    }
}

fn class_name(o: &Object) -> Option<(&str, &str)> {
    match o {
        Object::Class { module_name, class_name } => Some((module_name, class_name)),
        _ => None,
    }
}

fn non_negative(o: &Object, what: &str) -> Result<usize> {
    let v = match o {
        Object::Int(v) => *v as i64,
        Object::Long(v) => *v,
        _ => bail!("its {what} is not an integer"),
    };
    usize::try_from(v).map_err(|_| anyhow!("its {what} is negative ({v})"))
}

fn index_list(o: &Object, what: &str) -> Result<Vec<usize>> {
    match o {
        Object::Tuple(v) | Object::List(v) => v.iter().map(|x| non_negative(x, what)).collect(),
        _ => bail!("its {what} is not a tuple"),
    }
}

/// One tensor of a torch.save pickle: where its values are and how many.
struct TorchTensor {
    dtype: DType,
    shape: Vec<usize>,
    numel: usize,
    fortran: bool,
    /// In elements of `dtype`.
    offset: usize,
    storage: String,
    storage_len: usize,
}

/// The tensor a state-dict value rebuilds, None for values that are not
/// tensors and for integer tensors (counters such as num_batches_tracked).
/// Checks everything candle's own reader would index or multiply blindly.
fn torch_tensor(value: &Object) -> Result<Option<TorchTensor>> {
    let Object::Reduce { callable, args } = value else { return Ok(None) };
    let (mut callable, mut args) = (callable.as_ref(), args.as_ref());
    let tuple = |o: &'_ Object, n: usize, what: &str| -> Result<Vec<Object>> {
        match o {
            Object::Tuple(v) if v.len() >= n => Ok(v[..n].to_vec()),
            _ => bail!("its {what} arguments are not a tuple of at least {n}"),
        }
    };
    let mut unwrapped;
    match class_name(callable) {
        Some(("torch._tensor", "_rebuild_from_type_v2")) => {
            unwrapped = tuple(args, 3, "_rebuild_from_type_v2")?;
            let a = unwrapped.remove(2);
            let c = unwrapped.remove(0);
            unwrapped = vec![c, a];
            (callable, args) = (&unwrapped[0], &unwrapped[1]);
        }
        Some(("torch._utils", "_rebuild_parameter")) => {
            unwrapped = tuple(args, 1, "_rebuild_parameter")?;
            match &unwrapped[0] {
                Object::Reduce { callable: c, args: a } => (callable, args) = (c.as_ref(), a.as_ref()),
                _ => bail!("its _rebuild_parameter argument is not a tensor"),
            }
        }
        _ => {}
    }
    if class_name(callable) != Some(("torch._utils", "_rebuild_tensor_v2")) {
        return Ok(None);
    }
    let a = tuple(args, 4, "_rebuild_tensor_v2")?;
    let Object::PersistentLoad(storage) = &a[0] else { bail!("its storage is not a persistent id") };
    let st = tuple(storage, 5, "storage")?;
    let storage_class = class_name(&st[1]).ok_or_else(|| anyhow!("its storage type is not a class"))?.1;
    let dtype = match storage_class {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" | "CharStorage" | "ShortStorage" | "IntStorage" | "LongStorage" | "BoolStorage" => return Ok(None),
        other => bail!("its storage type {} is not supported", other.escape_debug()),
    };
    let storage = key_text(&st[2]).ok_or_else(|| anyhow!("its storage key is not a string"))?.to_string();
    if storage.is_empty() || !storage.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        bail!("its storage key {:?} is not a plain name", storage);
    }
    let storage_len = non_negative(&st[4], "storage size")?;
    let offset = non_negative(&a[1], "storage offset")?;
    let shape = index_list(&a[2], "shape")?;
    let stride = index_list(&a[3], "stride")?;
    if shape.len() != stride.len() {
        bail!("its shape {shape:?} and stride {stride:?} differ in length");
    }
    // Every partial product of the non-zero dimensions fits, so the
    // contiguity checks below cannot overflow.
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d.max(1)));
    let Some(numel) = numel.map(|n| if shape.contains(&0) { 0 } else { n }) else { bail!("its shape {shape:?} overflows") };
    let candle_shape = candle_core::Shape::from(shape.clone());
    let fortran = !candle_shape.is_contiguous(&stride);
    if fortran && !candle_shape.is_fortran_contiguous(&stride) {
        bail!("it is not contiguous (shape {shape:?}, stride {stride:?})");
    }
    if offset.checked_add(numel).is_none_or(|end| end > storage_len) {
        bail!("its {numel} values at offset {offset} run past its storage of {storage_len}");
    }
    Ok(Some(TorchTensor { dtype, shape, numel, fortran, offset, storage, storage_len }))
}

/// Refuses a zip whose end record claims more central-directory entries than
/// the file could hold (each takes at least 46 bytes): the zip reader sizes
/// its table by that count (up to 65535 entries, megabytes) before reading
/// one. The record is the one that ends exactly at the end of the file.
fn check_zip_end(file: &mut std::fs::File, file_len: u64) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let tail_len = file_len.min(22 + 65535);
    let mut tail = vec![0u8; tail_len as usize];
    file.seek(SeekFrom::Start(file_len - tail_len)).and_then(|_| file.read_exact(&mut tail)).context("cannot read")?;
    let end = (0..tail.len().saturating_sub(21)).rev().find(|&i| {
        tail[i..].starts_with(b"PK\x05\x06") && i + 22 + u16::from_le_bytes([tail[i + 20], tail[i + 21]]) as usize == tail.len()
    });
    if let Some(i) = end {
        let entries = u16::from_le_bytes([tail[i + 10], tail[i + 11]]) as u64;
        if entries != 0xffff && entries * 46 > file_len {
            bail!("not a readable zip file (its end record claims {entries} entries, more than its {file_len} bytes can hold)");
        }
    }
    file.seek(SeekFrom::Start(0)).context("cannot read")?;
    Ok(())
}

/// Reads the tensors of a torch.save zip file as f32 (fp16/bf16 widened).
/// Nothing larger than the file is allocated: the pickle is checked
/// (`check_pickle`) before candle's reader builds it, and every tensor's
/// shape, offset and storage against the zip entry that holds it before a
/// value is read.
pub fn read_torch(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let mut file = std::fs::File::open(path).context("cannot open")?;
    let file_len = file.metadata().context("cannot read its size")?.len();
    check_zip_end(&mut file, file_len)?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| anyhow!("not a readable zip file ({})", one_line(e)))?;
    let names: Vec<String> = zip.file_names().filter_map(|n| n.ok().map(|n| n.into_owned())).collect();
    let pkl =
        names.into_iter().find(|n| n.ends_with("data.pkl")).ok_or_else(|| anyhow!("a zip file without data.pkl: not a torch.save file"))?;
    if pkl.chars().any(char::is_control) {
        bail!("its pickle's name {pkl:?} has control characters: not a torch.save file");
    }
    // Storages are beside the pickle: archive/data.pkl, archive/data/0, …
    let dir = pkl.strip_suffix(".pkl").unwrap_or(&pkl).to_string();
    let bytes = {
        use std::io::Read;
        let entry = zip.by_name(&pkl).map_err(|e| anyhow!("cannot read {pkl} ({})", one_line(e)))?;
        if entry.size() > file_len {
            bail!("{pkl} claims {} bytes, more than the file's {file_len}", entry.size());
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.take(file_len + 1).read_to_end(&mut bytes).map_err(|e| anyhow!("cannot read {pkl} ({})", one_line(e)))?;
        if bytes.len() as u64 > file_len {
            bail!("{pkl} is longer than the file itself");
        }
        bytes
    };
    check_pickle(&bytes).map_err(|e| anyhow!("not a readable pickle ({pkl} {e})"))?;
    let obj = {
        let mut stack = Stack::empty();
        stack.read_loop(&mut std::io::Cursor::new(&bytes)).map_err(|e| anyhow!("not a readable pickle ({})", candle_line(e)))?;
        stack.finalize().map_err(|e| anyhow!("not a readable pickle ({})", candle_line(e)))?
    };
    let key = locate_state_dict(&obj)?;
    let dict = match (&obj, &key) {
        (Object::Dict(kvs), None) => kvs,
        (Object::Dict(kvs), Some(key)) => match kvs.iter().find(|(k, _)| key_text(k) == Some(key)) {
            Some((_, Object::Dict(inner))) => inner,
            _ => bail!("its '{key}' is not a dict"),
        },
        _ => bail!("is not a state dict"),
    };
    let mut tensors = Vec::new();
    let mut total = 0u64;
    for (name, value) in dict {
        let Some(name) = key_text(name) else { continue };
        // Names are quoted in messages, which must stay one line.
        if name.chars().any(char::is_control) {
            bail!("a tensor name {name:?} has control characters");
        }
        let Some(t) = torch_tensor(value).with_context(|| format!("tensor '{name}'"))? else { continue };
        let size = t.dtype.size_in_bytes() as u64;
        let entry = format!("{dir}/{}", t.storage);
        let held =
            zip.by_name(&entry).map_err(|e| anyhow!("tensor '{name}': its storage {entry} cannot be read ({})", one_line(e)))?.size();
        let claimed = (t.storage_len as u64).checked_mul(size).filter(|&b| b == held);
        if claimed.is_none() {
            bail!("tensor '{name}': its storage {entry} holds {held} bytes, not the {} × {size} bytes the pickle says", t.storage_len);
        }
        if held > file_len {
            bail!("tensor '{name}': its storage {entry} claims {held} bytes, more than the file's {file_len}");
        }
        total += t.numel as u64 * size;
        tensors.push((name.to_string(), t));
    }
    // Tied weights share a storage, so a tensor's values may be read twice;
    // more than that is not what a state dict does.
    if total > 2 * file_len {
        bail!("its tensors claim {total} bytes, more than twice the file's {file_len}");
    }
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        use std::io::Read;
        let entry = format!("{dir}/{}", t.storage);
        let size = t.dtype.size_in_bytes();
        let mut data = vec![0u8; t.numel * size];
        {
            let mut reader = zip.by_name(&entry).map_err(|e| anyhow!("tensor '{name}': cannot read {entry} ({})", one_line(e)))?;
            std::io::copy(&mut reader.by_ref().take((t.offset * size) as u64), &mut std::io::sink())
                .and_then(|_| reader.read_exact(&mut data))
                .map_err(|e| anyhow!("tensor '{name}': cannot read {entry} ({})", one_line(e)))?;
        }
        let build = || -> candle_core::Result<Tensor> {
            let cpu = &candle_core::Device::Cpu;
            let t = if t.fortran && t.shape.len() > 1 {
                let reversed: Vec<usize> = t.shape.iter().rev().copied().collect();
                let dims: Vec<usize> = (0..t.shape.len()).rev().collect();
                Tensor::from_raw_buffer(&data, t.dtype, &reversed, cpu)?.permute(dims)?.contiguous()?
            } else {
                Tensor::from_raw_buffer(&data, t.dtype, &t.shape, cpu)?
            };
            t.to_dtype(DType::F32)
        };
        let t = build().map_err(|e| anyhow!("tensor '{name}': {}", candle_line(e)))?;
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
        } else if p.is_dir() && p.file_name().is_some_and(|n| n != crate::layout::ANALYSIS) {
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
