//! The decoded-data cache: one safetensors file per source, holding the
//! pixels as bytes (a quarter of the f32 size) and the class names, keyed by
//! a hash of the source's paths, sizes and modification times. Written
//! atomically; an unreadable cache entry is ignored and rebuilt.

use super::{RawData, Split};
use crate::atomic::write_atomic;
use anyhow::{Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

const VERSION: &str = "1";

pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LINTRACE_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("lintrace");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache").join("lintrace"),
        None => std::env::temp_dir().join("lintrace-cache"),
    }
}

fn stamp(h: &mut Sha256, path: &Path) -> Result<()> {
    let md = std::fs::metadata(path).with_context(|| format!("{}: cannot stat", path.display()))?;
    let mtime = md.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
    h.update(path.to_string_lossy().as_bytes());
    h.update(md.len().to_le_bytes());
    h.update(mtime.to_le_bytes());
    Ok(())
}

fn finish(h: Sha256) -> String {
    h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect()
}

pub fn key_for_file(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    h.update(VERSION);
    stamp(&mut h, &path.canonicalize().with_context(|| format!("{}: cannot resolve", path.display()))?)?;
    Ok(finish(h))
}

/// Stats each of `files`, in the order given (cheap next to decoding them):
/// the key of a folder of files, which its reader lists.
pub fn key_for_files(files: &[PathBuf]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(VERSION);
    for f in files {
        stamp(&mut h, f)?;
    }
    Ok(finish(h))
}

fn path_for(dir: Option<&Path>, key: &str) -> PathBuf {
    dir.map(Path::to_path_buf).unwrap_or_else(default_dir).join(format!("decoded-{key}.safetensors"))
}

pub fn read(dir: Option<&Path>, key: &str) -> Result<Option<RawData>> {
    let path = path_for(dir, key);
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(None);
    };
    Ok(parse(&bytes))
}

fn parse(bytes: &[u8]) -> Option<RawData> {
    let (_, header) = SafeTensors::read_metadata(bytes).ok()?;
    let md = header.metadata().clone()?;
    let classes: Vec<String> = serde_json::from_str(md.get("classes")?).ok()?;
    let shape: Vec<usize> = serde_json::from_str(md.get("sample_shape")?).ok()?;
    let st = SafeTensors::deserialize(bytes).ok()?;
    let split = |name: &str| -> Option<Split> {
        let x = st.tensor(&format!("{name}_x")).ok()?;
        let y = st.tensor(&format!("{name}_y")).ok()?;
        let y: Vec<u32> = y.data().chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let sample_len = shape.iter().product();
        (x.data().len() == y.len() * sample_len).then(|| Split {
            x: x.data().iter().map(|&b| b as f32 / 255.0).collect(),
            y,
            sample_len,
            targets: 1,
        })
    };
    Some(RawData { train: split("train")?, test: split("test")?, classes, sample_shape: shape })
}

pub fn write(dir: Option<&Path>, key: &str, raw: &RawData) -> Result<()> {
    let path = path_for(dir, key);
    let enc = |s: &Split| -> (Vec<u8>, Vec<u8>) {
        (s.x.iter().map(|&v| (v * 255.0).round() as u8).collect(), s.y.iter().flat_map(|v| v.to_le_bytes()).collect())
    };
    let (trx, try_) = enc(&raw.train);
    let (tex, tey) = enc(&raw.test);
    let shape = |n: usize| {
        let mut s = vec![n];
        s.extend_from_slice(&raw.sample_shape);
        s
    };
    let views = vec![
        ("train_x", TensorView::new(Dtype::U8, shape(raw.train.len()), &trx)?),
        ("train_y", TensorView::new(Dtype::U32, vec![raw.train.len()], &try_)?),
        ("test_x", TensorView::new(Dtype::U8, shape(raw.test.len()), &tex)?),
        ("test_y", TensorView::new(Dtype::U32, vec![raw.test.len()], &tey)?),
    ];
    let md = HashMap::from([
        ("classes".to_string(), serde_json::to_string(&raw.classes)?),
        ("sample_shape".to_string(), serde_json::to_string(&raw.sample_shape)?),
        ("version".to_string(), VERSION.to_string()),
    ]);
    let bytes = safetensors::serialize(views, Some(md))?;
    // A cache that cannot be written only costs time next run.
    if let Err(e) = write_atomic(&path, &bytes) {
        eprintln!("warning: decoded-data cache not written: {e:#}");
    }
    Ok(())
}
