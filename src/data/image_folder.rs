//! Image folders: `ROOT/{train,test}/<class>/<image>.{png,jpg,jpeg}`, as
//! torchvision's ImageFolder, either unpacked or as a `.tar.gz` of that tree
//! (such as `cifar10-jpeg.tar.gz`). Classes are the sorted folder names.
//! Decoding 60,000 JPEGs takes a while, so the decoded pixels are cached
//! (see `cache`) under a key of the source's paths, sizes and times.

use super::cache;
use super::{RawData, Split};
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

const LAYOUT: &str = "expected ROOT/train/<class>/<image> and ROOT/test/<class>/<image> (PNG or JPEG), or a .tar.gz of that tree";

/// One undecoded image: split (0 train, 1 test), class folder name, origin.
struct Entry {
    split: usize,
    class: String,
    origin: String,
    bytes: Vec<u8>,
}

pub fn load(root: &Path, cache_dir: Option<&Path>) -> Result<RawData> {
    if !root.exists() {
        bail!("{}: does not exist; {LAYOUT}", root.display());
    }
    let is_tar = root.is_file() && root.to_string_lossy().ends_with("gz");
    let key = if is_tar { cache::key_for_file(root)? } else { key_for_tree(&find_root(root)?)? };
    if let Some(raw) = cache::read(cache_dir, &key)? {
        return Ok(raw);
    }
    let entries = if is_tar { read_tar(root)? } else { read_tree(&find_root(root)?)? };
    let raw = decode(entries).with_context(|| format!("{}", root.display()))?;
    cache::write(cache_dir, &key, &raw)?;
    Ok(raw)
}

/// The folder holding `train/` and `test/`: ROOT itself or its only subfolder.
fn find_root(root: &Path) -> Result<PathBuf> {
    if root.join("train").is_dir() && root.join("test").is_dir() {
        return Ok(root.to_path_buf());
    }
    let subdirs: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("{}: cannot read", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    if let [only] = subdirs.as_slice() {
        if only.join("train").is_dir() && only.join("test").is_dir() {
            return Ok(only.clone());
        }
    }
    bail!("{}: no train/ and test/ folders; {LAYOUT}", root.display())
}

fn is_image(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".png") || lower.ends_with(".jpg") || lower.ends_with(".jpeg")
}

fn read_tree(root: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for (split, name) in ["train", "test"].iter().enumerate() {
        for class_dir in sorted_dir(&root.join(name))? {
            if !class_dir.is_dir() {
                continue;
            }
            let class = class_dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            for file in sorted_dir(&class_dir)? {
                let fname = file.to_string_lossy().into_owned();
                if !is_image(&fname) {
                    continue;
                }
                let bytes = std::fs::read(&file).with_context(|| format!("{fname}: cannot read"))?;
                out.push(Entry { split, class: class.clone(), origin: fname, bytes });
            }
        }
    }
    Ok(out)
}

/// The cache key of an image tree: every file under `train/<class>/` and
/// `test/<class>/`, in the order they are read.
fn key_for_tree(root: &Path) -> Result<String> {
    let root = root.canonicalize().with_context(|| format!("{}: cannot resolve", root.display()))?;
    let mut files = Vec::new();
    for split in ["train", "test"] {
        for class in sorted_dir(&root.join(split))? {
            if class.is_dir() {
                files.extend(sorted_dir(&class)?);
            }
        }
    }
    cache::key_for_files(&files)
}

fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot read; {LAYOUT}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

fn read_tar(path: &Path) -> Result<Vec<Entry>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut out = Vec::new();
    let entries = archive.entries().with_context(|| format!("{}: not a tar.gz archive", path.display()))?;
    for entry in entries {
        let mut entry = entry.with_context(|| format!("{}: corrupt archive", path.display()))?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let parts: Vec<&str> = name.split('/').filter(|s| !s.is_empty()).collect();
        // …/<train|test>/<class>/<file>
        if parts.len() < 3 || !is_image(parts[parts.len() - 1]) {
            continue;
        }
        let split = match parts[parts.len() - 3] {
            "train" => 0,
            "test" => 1,
            _ => continue,
        };
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).with_context(|| format!("{}: {name}: truncated archive", path.display()))?;
        out.push(Entry { split, class: parts[parts.len() - 2].to_string(), origin: name, bytes });
    }
    out.sort_by(|a, b| (a.split, &a.class, &a.origin).cmp(&(b.split, &b.class, &b.origin)));
    Ok(out)
}

fn decode(entries: Vec<Entry>) -> Result<RawData> {
    if !entries.iter().any(|e| e.split == 0) || !entries.iter().any(|e| e.split == 1) {
        bail!("no images found in train/ and test/; {LAYOUT}");
    }
    let classes: Vec<String> =
        entries.iter().filter(|e| e.split == 0).map(|e| e.class.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let decoded: Vec<(u32, u32, Vec<u8>)> = entries
        .par_iter()
        .map(|e| {
            let img = image::load_from_memory(&e.bytes).map_err(|err| anyhow!("{}: cannot decode image ({err})", e.origin))?;
            let rgb = img.to_rgb8();
            let (w, h) = rgb.dimensions();
            // HWC → CHW, as PyTorch's ToTensor.
            let mut chw = vec![0u8; 3 * (w * h) as usize];
            for (i, px) in rgb.pixels().enumerate() {
                for c in 0..3 {
                    chw[c * (w * h) as usize + i] = px.0[c];
                }
            }
            Ok((w, h, chw))
        })
        .collect::<Result<_>>()?;
    let (w, h) = (decoded[0].0, decoded[0].1);
    let mut splits = [
        Split { x: Vec::new(), y: Vec::new(), sample_len: (3 * w * h) as usize, targets: 1 },
        Split { x: Vec::new(), y: Vec::new(), sample_len: (3 * w * h) as usize, targets: 1 },
    ];
    for (e, (ew, eh, px)) in entries.iter().zip(decoded) {
        if (ew, eh) != (w, h) {
            bail!("{}: image is {ew}×{eh} but the first image is {w}×{h}; all images must have one size", e.origin);
        }
        let label = classes.binary_search(&e.class).map_err(|_| anyhow!("{}: test class '{}' has no train folder", e.origin, e.class))?;
        splits[e.split].y.push(label as u32);
        splits[e.split].x.extend(px.iter().map(|&b| b as f32 / 255.0));
    }
    let [train, test] = splits;
    Ok(RawData { sample_shape: vec![3, h as usize, w as usize], classes, train, test })
}
