//! Every data source on small generated files: image folders (unpacked and
//! .tar.gz, with the decoded cache), CIFAR-10 binary, IDX; subsets, groups.

use lintrace::data::{self, DataConfig};
use std::path::Path;

fn cfg(dataset: &str, dir: &Path, cache: &Path) -> DataConfig {
    DataConfig {
        dataset: dataset.into(),
        data_dir: Some(dir.to_path_buf()),
        cache_dir: Some(cache.to_path_buf()),
        normalize: false,
        ..DataConfig::default()
    }
}

/// Pixel (x, y) of image `i` of class `c`: a value that encodes all four.
fn px(c: u8, i: u8, x: u32, y: u32, ch: u8) -> u8 {
    c * 100 + i * 20 + (y * 4 + x) as u8 + ch
}

fn write_tree(root: &Path) {
    for (split, count) in [("train", 3u8), ("test", 2u8)] {
        for (c, class) in ["cat", "ant"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                let img = image::RgbImage::from_fn(4, 4, |x, y| {
                    image::Rgb([px(c as u8, i, x, y, 0), px(c as u8, i, x, y, 1), px(c as u8, i, x, y, 2)])
                });
                img.save(dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
}

#[test]
fn image_folder_tree_and_tarball_agree_and_are_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("pics");
    write_tree(&tree);
    let cache = tmp.path().join("cache");
    let d = data::load(&cfg("image-folder", &tree, &cache)).unwrap();
    assert_eq!(d.sample_shape, vec![3, 4, 4]);
    // Classes are sorted folder names: ant = 0, cat = 1.
    assert_eq!(d.classes, vec!["ant", "cat"]);
    assert_eq!((d.train.len(), d.test.len()), (6, 4));
    assert_eq!(d.train.y, vec![0, 0, 0, 1, 1, 1]);
    // CHW layout, scaled by 1/255: sample 0 is ant (written as c = 1), image 0.
    let s = d.train.sample(0);
    assert_eq!(s[0], px(1, 0, 0, 0, 0) as f32 / 255.0);
    assert_eq!(s[16 + 4 + 1], px(1, 0, 1, 1, 1) as f32 / 255.0);
    assert!(std::fs::read_dir(&cache).unwrap().count() == 1, "decoded cache written");
    let again = data::load(&cfg("image-folder", &tree, &cache)).unwrap();
    assert_eq!(again.train, d.train);
    assert_eq!(again.fingerprint, d.fingerprint);

    // The same tree as a .tar.gz, under a top folder, as cifar10-jpeg.tar.gz.
    let tgz = tmp.path().join("pics.tar.gz");
    let f = std::fs::File::create(&tgz).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(f, flate2::Compression::fast()));
    b.append_dir_all("pics", &tree).unwrap();
    b.into_inner().unwrap().finish().unwrap();
    let t = data::load(&cfg("image-folder", &tgz, &cache)).unwrap();
    assert_eq!(t.train, d.train);
    assert_eq!(t.test, d.test);
    assert_eq!(t.classes, d.classes);
}

#[test]
fn undecodable_image_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("pics");
    write_tree(&tree);
    std::fs::write(tree.join("train/cat/001.png"), b"not a png").unwrap();
    let e = data::load(&cfg("image-folder", &tree, &tmp.path().join("c"))).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("cat/001.png") && msg.contains("cannot decode image"), "{msg}");
}

#[test]
fn cifar_binary_and_idx_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let record = |label: u8, v: u8| {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(v, 3072));
        r
    };
    for i in 1..=5u8 {
        std::fs::write(dir.join(format!("data_batch_{i}.bin")), [record(i, i), record(9, 200)].concat()).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), record(3, 7)).unwrap();
    let d = data::load(&cfg("cifar10", tmp.path(), tmp.path())).unwrap();
    assert_eq!((d.train.len(), d.test.len(), d.sample_shape.clone()), (10, 1, vec![3, 32, 32]));
    assert_eq!(d.train.y[..4], [1, 9, 2, 9]);
    assert_eq!(d.classes[3], "cat");
    assert_eq!(d.test.sample(0)[3071], 7.0 / 255.0);
    // A truncated batch is refused with its name.
    std::fs::write(dir.join("test_batch.bin"), &record(3, 7)[..100]).unwrap();
    let e = format!("{:#}", data::load(&cfg("cifar10", tmp.path(), tmp.path())).unwrap_err());
    assert!(e.contains("test_batch.bin") && e.contains("truncated"), "{e}");

    // IDX, uncompressed.
    let idx = tmp.path().join("idx");
    std::fs::create_dir_all(&idx).unwrap();
    let images = |n: u32| {
        [
            vec![0, 0, 8, 3],
            n.to_be_bytes().to_vec(),
            2u32.to_be_bytes().to_vec(),
            3u32.to_be_bytes().to_vec(),
            (0..n * 6).map(|v| v as u8).collect(),
        ]
        .concat()
    };
    let labels = |n: u32| [vec![0, 0, 8, 1], n.to_be_bytes().to_vec(), (0..n).map(|v| (v % 2) as u8).collect()].concat();
    std::fs::write(idx.join("train-images-idx3-ubyte"), images(4)).unwrap();
    std::fs::write(idx.join("train-labels-idx1-ubyte"), labels(4)).unwrap();
    std::fs::write(idx.join("t10k-images-idx3-ubyte"), images(2)).unwrap();
    let e = format!("{:#}", data::load(&cfg("idx", &idx, tmp.path())).unwrap_err());
    assert!(e.contains("missing t10k-labels-idx1-ubyte"), "{e}");
    std::fs::write(idx.join("t10k-labels-idx1-ubyte"), labels(2)).unwrap();
    let d = data::load(&cfg("idx", &idx, tmp.path())).unwrap();
    assert_eq!((d.train.len(), d.sample_shape.clone(), d.train.y.clone()), (4, vec![1, 2, 3], vec![0, 1, 0, 1]));
}

#[test]
fn subsets_groups_and_normalisation() {
    let base = DataConfig { dataset: "digits".into(), ..DataConfig::default() };
    let full = data::load(&base).unwrap();
    let binary = data::load(&DataConfig { groups: Some("0-4/5-9".into()), ..base.clone() }).unwrap();
    assert_eq!(binary.classes, vec!["0+1+2+3+4", "5+6+7+8+9"]);
    assert_eq!(binary.train.len(), full.train.len());
    let sub = data::load(&DataConfig { classes: Some(vec![7, 1]), ..base.clone() }).unwrap();
    assert_eq!(sub.classes, vec!["7", "1"]);
    assert!(sub.train.y.iter().all(|&y| y < 2));
    // Normalised training data has zero mean and unit variance per channel.
    let x = &full.train.x;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64;
    assert!(mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3, "{mean} {var}");
    let e = format!("{:#}", data::load(&DataConfig { classes: Some(vec![12]), ..base }).unwrap_err());
    assert!(e.contains("class 12 does not exist"), "{e}");
}

#[test]
fn synthetic_tasks_are_seeded() {
    let c = DataConfig { dataset: "sinusoid-2d".into(), n_train: 500, n_test: 100, normalize: false, ..DataConfig::default() };
    let a = data::load(&c).unwrap();
    assert_eq!(a.train, data::load(&c).unwrap().train);
    assert!(a.train.x.chunks(2).all(|p| p[0] * p[0] + p[1] * p[1] <= 1.0));
    // About 10% label noise against the clean boundary.
    let flipped =
        a.train.x.chunks(2).zip(&a.train.y).filter(|(p, &y)| (p[1] > 0.25 * (3.0 * std::f32::consts::PI * p[0]).sin()) as u32 != y).count();
    assert!((25..=80).contains(&flipped), "{flipped} of 500 flipped");
    let g = data::load(&DataConfig {
        dataset: "gaussian-mixture".into(),
        synthetic_dim: 5,
        synthetic_classes: 3,
        n_train: 30,
        n_test: 9,
        ..DataConfig::default()
    })
    .unwrap();
    assert_eq!((g.sample_shape.clone(), g.classes.len(), g.test.len()), (vec![5], 3, 9));
    let other = data::load(&DataConfig { data_seed: 1, ..c }).unwrap();
    assert_ne!(other.train, a.train);
}
