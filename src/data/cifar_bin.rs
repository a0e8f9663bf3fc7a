//! CIFAR-10 in its official binary format (`cifar-10-batches-bin/`): records
//! of one label byte and 3072 pixel bytes (R, G, B planes of 32×32).

use super::{RawData, Split};
use anyhow::{bail, Context, Result};
use std::path::Path;

const RECORD: usize = 1 + 3 * 32 * 32;
const NAMES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

pub fn load(dir: &Path) -> Result<RawData> {
    let nested = dir.join("cifar-10-batches-bin");
    let dir = if nested.is_dir() { nested } else { dir.to_path_buf() };
    let read = |names: &[String]| -> Result<Split> {
        let mut s = Split { x: Vec::new(), y: Vec::new(), sample_len: RECORD - 1, targets: 1 };
        for name in names {
            let path = dir.join(name);
            if !path.is_file() {
                bail!("{}: missing; a CIFAR-10 binary folder holds data_batch_1.bin … data_batch_5.bin and test_batch.bin", path.display());
            }
            let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
            if bytes.is_empty() || bytes.len() % RECORD != 0 {
                bail!("{}: {} bytes is not a whole number of {RECORD}-byte records (truncated?)", path.display(), bytes.len());
            }
            for rec in bytes.chunks_exact(RECORD) {
                if rec[0] as usize >= NAMES.len() {
                    bail!("{}: label {} out of range", path.display(), rec[0]);
                }
                s.y.push(rec[0] as u32);
                s.x.extend(rec[1..].iter().map(|&b| b as f32 / 255.0));
            }
        }
        Ok(s)
    };
    let train = read(&(1..=5).map(|i| format!("data_batch_{i}.bin")).collect::<Vec<_>>())?;
    let test = read(&["test_batch.bin".to_string()])?;
    Ok(RawData { sample_shape: vec![3, 32, 32], classes: NAMES.iter().map(|s| s.to_string()).collect(), train, test })
}
