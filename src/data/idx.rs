//! MNIST-style IDX files (gzipped or not), and the scikit-learn 8×8 digits
//! vendored in `fixtures/digits/` in that format (embedded in the binary, so
//! `--dataset digits` needs no files).

use super::{RawData, Split};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

const FILES: [&str; 4] = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

pub fn load_dir(dir: &Path) -> Result<RawData> {
    let mut bufs = Vec::new();
    for name in FILES {
        let plain = dir.join(name);
        let gz = dir.join(format!("{name}.gz"));
        let path: PathBuf = if plain.is_file() {
            plain
        } else if gz.is_file() {
            gz
        } else {
            bail!("{}: missing {name}[.gz]; an IDX dataset folder holds {} (optionally .gz)", dir.display(), FILES.join(", "));
        };
        let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        bufs.push((path, bytes));
    }
    from_buffers(&bufs)
}

pub fn load_digits() -> Result<RawData> {
    let files: [(&str, &[u8]); 4] = [
        ("digits/train-images-idx3-ubyte.gz", include_bytes!("../../fixtures/digits/train-images-idx3-ubyte.gz")),
        ("digits/train-labels-idx1-ubyte.gz", include_bytes!("../../fixtures/digits/train-labels-idx1-ubyte.gz")),
        ("digits/t10k-images-idx3-ubyte.gz", include_bytes!("../../fixtures/digits/t10k-images-idx3-ubyte.gz")),
        ("digits/t10k-labels-idx1-ubyte.gz", include_bytes!("../../fixtures/digits/t10k-labels-idx1-ubyte.gz")),
    ];
    let bufs: Vec<(PathBuf, Vec<u8>)> = files.iter().map(|(n, b)| (PathBuf::from(n), b.to_vec())).collect();
    from_buffers(&bufs)
}

fn from_buffers(bufs: &[(PathBuf, Vec<u8>)]) -> Result<RawData> {
    let mut parsed = Vec::new();
    for (path, bytes) in bufs {
        let p = parse(&gunzip(bytes).with_context(|| format!("{}: bad gzip data", path.display()))?)
            .with_context(|| format!("{}", path.display()))?;
        parsed.push(p);
    }
    let split = |images: &Idx, labels: &Idx, what: &str| -> Result<(Split, Vec<usize>)> {
        if images.dims.len() != 3 || labels.dims.len() != 1 {
            bail!("{what}: expected images with 3 dimensions and labels with 1, got {:?} and {:?}", images.dims, labels.dims);
        }
        if images.dims[0] != labels.dims[0] {
            bail!("{what}: {} images but {} labels", images.dims[0], labels.dims[0]);
        }
        let x = images.data.iter().map(|&b| b as f32 / 255.0).collect();
        let y = labels.data.iter().map(|&b| b as u32).collect();
        Ok((Split { x, y, sample_len: images.dims[1] * images.dims[2], targets: 1 }, vec![1, images.dims[1], images.dims[2]]))
    };
    let (train, shape) = split(&parsed[0], &parsed[1], "train")?;
    let (test, test_shape) = split(&parsed[2], &parsed[3], "t10k")?;
    if shape != test_shape {
        bail!("train images are {shape:?} but test images are {test_shape:?}");
    }
    let k = train.y.iter().chain(&test.y).copied().max().unwrap_or(0) as usize + 1;
    Ok(RawData { sample_shape: shape, classes: (0..k).map(|c| c.to_string()).collect(), train, test })
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

#[derive(Debug)]
struct Idx {
    dims: Vec<usize>,
    data: Vec<u8>,
}

/// IDX: two zero bytes, a type byte (0x08 = u8), a rank byte, big-endian u32
/// dimensions, then the data.
fn parse(b: &[u8]) -> Result<Idx> {
    if b.len() < 4 || b[0] != 0 || b[1] != 0 {
        bail!("not an IDX file (bad magic)");
    }
    if b[2] != 0x08 {
        bail!("IDX element type 0x{:02x} is not supported (only unsigned bytes, 0x08)", b[2]);
    }
    let rank = b[3] as usize;
    let header = 4 + 4 * rank;
    if b.len() < header {
        bail!("IDX header truncated");
    }
    let dims: Vec<usize> =
        (0..rank).map(|i| u32::from_be_bytes([b[4 + 4 * i], b[5 + 4 * i], b[6 + 4 * i], b[7 + 4 * i]]) as usize).collect();
    let n: usize = dims.iter().product();
    if b.len() != header + n {
        bail!("IDX data has {} bytes, dimensions {dims:?} need {n} (truncated or corrupt)", b.len() - header);
    }
    Ok(Idx { dims, data: b[header..].to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_load() {
        let d = load_digits().unwrap();
        assert_eq!(d.sample_shape, vec![1, 8, 8]);
        assert_eq!(d.train.len() + d.test.len(), 1797);
        assert_eq!(d.classes.len(), 10);
        assert!(d.train.x.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn truncated_idx_is_an_error() {
        let mut b = vec![0, 0, 8, 1, 0, 0, 0, 5, 1, 2];
        assert!(parse(&b).unwrap_err().to_string().contains("truncated"));
        b.extend_from_slice(&[3, 4, 5]);
        assert_eq!(parse(&b).unwrap().data, vec![1, 2, 3, 4, 5]);
    }
}
