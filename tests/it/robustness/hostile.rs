//! Hostile and malformed input, one case per row of docs/robustness.md's "Bad
//! input" table: each must give an error that names the problem, and none
//! may panic, allocate beyond what the file justifies, or write outside the
//! run folder.

use crate::common::*;
use lintrace::checkpoint::{self, CheckpointMeta};
use lintrace::data::{self, DataConfig};
use lintrace::spec::ModelSpec;
use std::path::Path;

/// Runs `f`, which must fail without panicking with an error containing
/// every one of `want`.
fn refused<T>(case: &str, want: &[&str], f: impl FnOnce() -> anyhow::Result<T> + std::panic::UnwindSafe) {
    let result = std::panic::catch_unwind(f).unwrap_or_else(|_| panic!("{case}: panicked"));
    let Err(e) = result else { panic!("{case}: was accepted") };
    let msg = format!("{e:#}");
    assert!(!msg.contains('\n'), "{case}: not one line: {msg}");
    for w in want {
        assert!(msg.contains(w), "{case}: error does not say '{w}': {msg}");
    }
}

fn tiny_spec() -> ModelSpec {
    ModelSpec::from_json(r#"{"spec_version":1,"kind":"mlp","input_shape":[2],"num_classes":2,"hidden":[3],"activation":"relu"}"#).unwrap()
}

fn meta() -> CheckpointMeta {
    CheckpointMeta { spec: tiny_spec(), run_id: "r".into(), step: 0, epoch: 0.0, samples_seen: 0 }
}

/// A safetensors file from a raw header text and data.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn load_bytes(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<checkpoint::Loaded> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    checkpoint::load(&p, Some(&meta()))
}

#[test]
fn hostile_checkpoint_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let good = {
        let t = candle_core::Tensor::zeros((3, 2), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let p = d.join("good.safetensors");
        checkpoint::save(&p, &meta(), &[("layers.0.weight".into(), t)]).unwrap();
        std::fs::read(&p).unwrap()
    };
    let f = |name: &'static str, bytes: Vec<u8>, want: &'static [&'static str]| {
        let dir = d.to_path_buf();
        refused(name, &[&[name][..], want].concat(), move || load_bytes(&dir, name, &bytes));
    };
    f("zero-length", Vec::new(), &["not a valid safetensors file"]);
    f("truncated", good[..good.len() - 7].to_vec(), &["not a valid safetensors file"]);
    f("random-bytes", (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(), &["not a valid safetensors file"]);
    // The 8-byte prefix claims a header longer than the file (and than any
    // header could be): refused before anything of that size is allocated.
    f("huge-prefix", [u64::MAX.to_le_bytes().to_vec(), b"{}".to_vec()].concat(), &["not a valid safetensors file"]);
    f("prefix-past-end", [1000u64.to_le_bytes().to_vec(), b"{}".to_vec()].concat(), &["not a valid safetensors file"]);
    // A tensor that claims 2^40 values with 24 bytes of data.
    f(
        "huge-shape",
        raw(r#"{"a":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,24]}}"#, &[0; 24]),
        &["not a valid safetensors file"],
    );
    f(
        "overlapping",
        raw(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, &[0; 12]),
        &["not a valid safetensors file"],
    );
    f("out-of-bounds", raw(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &[0; 8]), &["not a valid safetensors file"]);
    f(
        "duplicate-names",
        raw(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, &[0; 8]),
        &["tensor name 'a' appears twice"],
    );
    f(
        "duplicate-same-offsets",
        raw(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, &[0; 4]),
        &["appears twice"],
    );
    f("int-dtype", raw(r#"{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, &[0; 8]), &["tensor 'a' has dtype I64"]);
    f("not-json-header", raw("{not json", &[]), &["not a valid safetensors file"]);
    // Metadata whose spec asks for 2^62 parameters.
    let huge_spec =
        r#"{"spec_version":1,"kind":"mlp","input_shape":[4611686018427387904],"num_classes":2,"hidden":[8],"activation":"relu"}"#;
    let header = format!(
        r#"{{"__metadata__":{{"format":"lintrace.checkpoint","format_version":"1","spec":{},"run_id":"r","step":"0","epoch":"0","samples_seen":"0"}},"a":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}}}"#,
        serde_json::Value::String(huge_spec.into())
    );
    f("spec-overflow", raw(&header, &[0; 4]), &["refused before allocating"]);
    // A well-formed file whose tensors do not fit its spec.
    let dir = d.to_path_buf();
    refused("spec-mismatch", &["spec-mismatch", "does not match"], move || {
        let l = load_bytes(&dir, "spec-mismatch", &good)?;
        l.model(&candle_core::Device::Cpu).map(|_| ())
    });
}

#[test]
fn hostile_specs() {
    let spec = |name: &'static str, text: String, want: &'static [&'static str]| {
        refused(name, want, move || ModelSpec::from_json(&text).map_err(anyhow::Error::msg));
    };
    spec("deep-nesting", format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)), &["malformed model spec"]);
    let deep = format!(
        r#"{{"spec_version":1,"kind":"mlp","input_shape":[2],"num_classes":2,"activation":"relu","hidden":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    spec("deep-nesting-in-a-field", deep, &["malformed model spec", "recursion limit"]);
    let mlp = |input: &str, hidden: &str| {
        format!(r#"{{"spec_version":1,"kind":"mlp","input_shape":{input},"num_classes":2,"hidden":{hidden},"activation":"relu"}}"#)
    };
    spec("product-overflow", mlp("[4294967296,4294967296,16]", "[8]"), &["input_shape overflows"]);
    spec("terabytes", mlp("[1000000]", "[1000000]"), &["a dense layer", "refused before allocating"]);
    spec("width-overflow", mlp("[2]", "[18446744073709551615, 2]"), &["refused before allocating"]);
    let cnn = r#"{"spec_version":1,"kind":"cnn","input_shape":[3,65536,65536],"num_classes":2,"conv":[65536],"kernel_size":3,"dense":[8],"activation":"relu"}"#;
    spec("conv-terabytes", cnn.into(), &["refused before allocating"]);
    let resnet = |stages: &str, widths: &str, input: &str| {
        format!(
            r#"{{"spec_version":1,"kind":"resnet","block":"basic","stages":{stages},"widths":{widths},"stem":"small","stem_width":16,"shortcut":"a","input_shape":{input},"num_classes":2,"activation":"relu"}}"#
        )
    };
    let many = format!("[{}]", vec!["1"; 100_000].join(","));
    let many_widths = format!("[{}]", vec!["16"; 100_000].join(","));
    spec("resnet-many-stages", resnet(&many, &many_widths, "[3,32,32]"), &["resnet too large"]);
    spec("resnet-deep", resnet("[18446744073709551615]", "[16]", "[3,32,32]"), &["resnet too large"]);
    spec("resnet-wide", resnet("[1]", "[4294967296]", "[3,32,32]"), &["resnet too large"]);
    spec("resnet-terabytes", resnet("[2]", "[65536]", "[3,65536,65536]"), &["refused before allocating"]);
    spec("resnet-narrowing-a", resnet("[1,1]", "[16,8]", "[3,32,32]"), &["shortcut a (zero padding) cannot narrow"]);
    spec("resnet-stage-width-mismatch", resnet("[1,1]", "[16]", "[3,32,32]"), &["one width per stage"]);
    spec("negative", mlp("[-1]", "[8]"), &["malformed model spec"]);
    spec("zero-width", mlp("[2]", "[0]"), &["widths must be positive"]);
    spec("unknown-key", mlp("[2]", "[8]").replace("\"activation\"", "\"actvation\""), &["malformed model spec"]);
    spec("not-json", "{".into(), &["malformed model spec"]);
}

#[test]
fn hostile_probes() {
    let tmp = tempfile::tempdir().unwrap();
    let probe = |name: &'static str, bytes: Vec<u8>, want: &'static [&'static str]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        refused(name, &[&[name][..], want].concat(), move || lintrace::probe::load(&p));
    };
    probe("empty-probe", Vec::new(), &["not a valid safetensors file"]);
    probe("no-labels", raw(r#"{"inputs":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}}"#, &[0; 8]), &["'labels' is missing"]);
    probe(
        "label-count",
        raw(
            r#"{"inputs":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]},"labels":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}}"#,
            &[0; 16],
        ),
        &["2 inputs but 1 labels"],
    );
    let nan = [f32::NAN.to_le_bytes(), 0f32.to_le_bytes()].concat();
    probe(
        "nan-inputs",
        raw(
            r#"{"inputs":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]},"labels":{"dtype":"I64","shape":[2],"data_offsets":[8,24]}}"#,
            &[nan, vec![0; 16]].concat(),
        ),
        &["not finite"],
    );
}

fn data_cfg(dataset: &str, dir: &Path) -> DataConfig {
    DataConfig {
        dataset: dataset.into(),
        data_dir: Some(dir.to_path_buf()),
        cache_dir: Some(dir.join("cache")),
        normalize: false,
        ..Default::default()
    }
}

#[test]
fn hostile_datasets() {
    let tmp = tempfile::tempdir().unwrap();
    let load = |name: &'static str, dataset: &'static str, dir: std::path::PathBuf, want: &'static [&'static str]| {
        refused(name, want, move || data::load(&data_cfg(dataset, &dir)));
    };
    // An image folder with no class folders, and one with an empty class.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("train")).unwrap();
    std::fs::create_dir_all(empty.join("test")).unwrap();
    load("empty-folder", "image-folder", empty.clone(), &["no images found"]);
    let img = |p: &Path, w: u32| image::RgbImage::from_pixel(w, w, image::Rgb([1, 2, 3])).save(p).unwrap();
    let mixed = tmp.path().join("mixed");
    for split in ["train", "test"] {
        for class in ["a", "b"] {
            std::fs::create_dir_all(mixed.join(split).join(class)).unwrap();
            img(&mixed.join(split).join(class).join("0.png"), 4);
        }
    }
    img(&mixed.join("train/b/1.png"), 5);
    load("mixed-sizes", "image-folder", mixed.clone(), &["1.png", "5×5"]);
    // Test classes that the training split does not have.
    let mislabelled = tmp.path().join("mislabelled");
    for (split, class) in [("train", "a"), ("train", "b"), ("test", "a"), ("test", "zebra")] {
        std::fs::create_dir_all(mislabelled.join(split).join(class)).unwrap();
        img(&mislabelled.join(split).join(class).join("0.png"), 4);
    }
    load("mislabelled", "image-folder", mislabelled.clone(), &["zebra"]);
    // IDX: wrong magic, short data, labels beyond the images.
    let idx = |name: &str, images: Vec<u8>, labels: Vec<u8>| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for split in ["train", "t10k"] {
            std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), &images).unwrap();
            std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), &labels).unwrap();
        }
        dir
    };
    let header = |magic: [u8; 4], dims: &[u32]| [magic.to_vec(), dims.iter().flat_map(|d| d.to_be_bytes()).collect()].concat();
    let images = [header([0, 0, 8, 3], &[2, 2, 2]), vec![7; 8]].concat();
    let labels = [header([0, 0, 8, 1], &[2]), vec![0, 1]].concat();
    load("idx-magic", "idx", idx("idx-magic", [header([0, 0, 9, 3], &[2, 2, 2]), vec![7; 8]].concat(), labels.clone()), &["magic"]);
    load("idx-short", "idx", idx("idx-short", [header([0, 0, 8, 3], &[2, 2, 2]), vec![7; 5]].concat(), labels.clone()), &["short"]);
    load(
        "idx-count",
        "idx",
        idx("idx-count", images.clone(), [header([0, 0, 8, 1], &[3]), vec![0, 1, 1]].concat()),
        &["3 labels", "2 images"],
    );
    // A huge count in the header is checked against the file's length, not allocated.
    load(
        "idx-huge",
        "idx",
        idx("idx-huge", [header([0, 0, 8, 3], &[u32::MAX, 65535, 65535]), vec![7; 8]].concat(), labels),
        &["truncated"],
    );
    // CIFAR-10 binary with a label outside 0..10.
    let cifar = tmp.path().join("cifar").join("cifar-10-batches-bin");
    std::fs::create_dir_all(&cifar).unwrap();
    let record = |label: u8| [vec![label], vec![0; 3072]].concat();
    for i in 1..=5 {
        std::fs::write(cifar.join(format!("data_batch_{i}.bin")), record(1)).unwrap();
    }
    std::fs::write(cifar.join("test_batch.bin"), record(12)).unwrap();
    load("cifar-label", "cifar10", tmp.path().join("cifar"), &["test_batch.bin", "label 12"]);
}

#[test]
fn hostile_training_configs_and_sweeps() {
    let tmp = tempfile::tempdir().unwrap();
    let one_line = |o: &std::process::Output, want: &[&str]| {
        let err = stderr(o);
        assert!(!o.status.success() && !err.contains("panicked"), "{err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{err}");
        for w in want {
            assert!(errors[0].contains(w), "'{w}' not in: {err}");
        }
    };
    // A probe larger than the split it is drawn from: the whole split, said once.
    let out = run_ok(&mut tiny_mlp_cmd(tmp.path(), "p", &["--probe-size", "1000"]));
    assert!(
        stderr(&out).contains("note: probe_size 1000 is larger than the test split it is drawn from (128 samples)"),
        "{}",
        stderr(&out)
    );
    let m = lintrace::run::RunManifest::read(&tmp.path().join("p")).unwrap();
    assert_eq!(m.probe_size, 128);
    // A run refused before it wrote anything leaves no folder.
    one_line(&tiny_mlp_cmd(tmp.path(), "q", &["--activation", "swish"]).output().unwrap(), &["swish"]);
    assert!(!tmp.path().join("q").exists(), "a refused run leaves no folder");
    // Run names that would leave the runs root.
    for name in ["../x", "a/b", ".hidden"] {
        one_line(&tiny_mlp_cmd(tmp.path(), name, &[]).output().unwrap(), &["plain folder name"]);
    }
    assert!(!tmp.path().parent().unwrap().join("x").exists());
    // Sweep files.
    let sweep = |name: &str, body: &str, want: &[&str]| {
        let f = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&f, body).unwrap();
        let o = train_bin().arg("sweep").arg(&f).arg("--out").arg(tmp.path().join("sweeps")).arg("--dry-run").output().unwrap();
        one_line(&o, want);
    };
    let base = "[base]\nmodel = \"mlp\"\ndataset = \"sinusoid-2d\"\nsteps = 5\n";
    sweep("unknown-key", &format!("name = \"s\"\nfoo = 1\n{base}[grid]\nlr = [0.1]\n"), &["unknown sweep key 'foo'"]);
    sweep("unknown-axis", &format!("name = \"s\"\n{base}[grid]\nlrr = [0.1]\n"), &["unknown config key 'lrr'"]);
    sweep("empty-axis", &format!("name = \"s\"\n{base}[grid]\nlr = []\n"), &["axis 'lr' is empty"]);
    sweep("duplicate-ids", &format!("name = \"s\"\n{base}[grid]\nlr = [0.1, 0.1]\n"), &["share the id"]);
    sweep("escaping-name", &format!("name = \"../s\"\n{base}[grid]\nlr = [0.1]\n"), &["plain folder name"]);
    sweep("not-toml", "name = [", &["not-toml.toml", "malformed TOML at line 1"]);
}

/// torch.save files (.pt): a truncated zip, storages too short or past their
/// end, huge shapes, integer storages, an absurdly nested pickle or a memo
/// bomb. Each is one error line naming the file, without a panic, and the
/// loader never holds more than twice the file's size (plus a fixed 256 KiB
/// for the zip and pickle readers' own buffers).
#[test]
fn hostile_torch_files() {
    use super::torch_file::*;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    let spec = tiny_spec();
    let good: Vec<FakeTensor> =
        spec.tensor_shapes().iter().enumerate().map(|(i, (name, shape))| FakeTensor::f32(name, &i.to_string(), shape)).collect();
    // The builder writes files the reader takes, and the values arrive.
    let bytes = torch_file(&good);
    let (loaded, held) = super::torch_file::peak_memory(|| load_bytes(&d, "good.pt", &bytes));
    let loaded = loaded.unwrap();
    assert!(held <= 2 * bytes.len() + (256 << 10), "the good file: held {held} bytes");
    let w = &loaded.tensors[&good[0].name];
    assert_eq!(w.dims(), [3, 2]);
    assert_eq!(w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]);
    // The real torch.save fixture loads too (its spec: fixtures/interop/cnn_spec.json).
    let cnn = ModelSpec::from_json(&std::fs::read_to_string(fixture("interop/cnn_spec.json")).unwrap()).unwrap();
    let cnn_meta = CheckpointMeta { spec: cnn, run_id: "r".into(), step: 0, epoch: 0.0, samples_seen: 0 };
    checkpoint::load(&fixture("interop/cnn_sequential.pt"), Some(&cnn_meta)).unwrap();

    let case = |name: &'static str, bytes: Vec<u8>, want: &'static [&'static str]| {
        let file = format!("{name}.pt");
        let limit = 2 * bytes.len() + (256 << 10);
        // Memory first (a loader that over-allocates may still fail cleanly),
        // then the error.
        let load = std::panic::AssertUnwindSafe(|| load_bytes(&d, &file, &bytes));
        let (outcome, held) = super::torch_file::peak_memory(|| std::panic::catch_unwind(load));
        let result = outcome.unwrap_or_else(|_| panic!("{name}: panicked"));
        assert!(held <= limit, "{name}: held {held} bytes at once, more than {limit}");
        refused(name, &[&[file.as_str()][..], want].concat(), std::panic::AssertUnwindSafe(move || result));
    };
    let with = |f: &dyn Fn(&mut Vec<FakeTensor>)| {
        let mut t = good.clone();
        f(&mut t);
        torch_file(&t)
    };
    // The zip container.
    for cut in [bytes.len() - 1, bytes.len() - 30, bytes.len() / 2, 10] {
        case("truncated-zip", bytes[..cut].to_vec(), &["not a readable zip file"]);
    }
    // A ZIP64 end record claiming 2^34 entries in a directory of 2^40 bytes.
    case("zip64-huge-directory", zip64_claiming(&bytes, 1 << 34, 1 << 40, 1 << 39), &["not a readable zip file"]);
    case("zip64-many-entries", zip64_claiming(&bytes, 1 << 34, 1 << 40, 100), &["not a readable zip file"]);
    case("zip-without-pickle", zip(&[("archive/data/0".into(), vec![0; 24])]), &["without data.pkl"]);
    let no_storage = {
        let mut e = unzip(&bytes);
        e.retain(|(n, _)| n != "archive/data/1");
        zip(&e)
    };
    case("missing-storage", no_storage, &["archive/data/1", "cannot be read"]);
    // Offsets, sizes and shapes.
    case("offset-past-end", with(&|t| t[0].offset = 1), &["layers.0.weight", "run past its storage"]);
    case("offset-far-past-end", with(&|t| t[0].offset = i64::MAX), &["run past its storage"]);
    case("negative-offset", with(&|t| t[0].offset = -1), &["storage offset is negative"]);
    case("storage-shorter-than-said", with(&|t| t[0].storage_len = 1 << 40), &["holds 0 bytes", "1099511627776 × 4"]);
    let short = {
        let mut e = unzip(&bytes);
        e.iter_mut().find(|(n, _)| n == "archive/data/0").unwrap().1.truncate(20);
        zip(&e)
    };
    case("storage-size-mismatch", short, &["archive/data/0 holds 20 bytes, not the 6 × 4"]);
    let long = {
        let mut e = unzip(&bytes);
        e.iter_mut().find(|(n, _)| n == "archive/data/0").unwrap().1.extend([0; 4]);
        zip(&e)
    };
    case("storage-longer-than-said", long, &["archive/data/0 holds 28 bytes, not the 6 × 4"]);
    case(
        "huge-shape",
        with(&|t| {
            t[0].shape = vec![1 << 40, 1 << 40];
            t[0].stride = vec![1 << 40, 1];
        }),
        &["overflows"],
    );
    case(
        "shape-larger-than-storage",
        with(&|t| {
            t[0].shape = vec![1 << 20, 1 << 20];
            t[0].stride = vec![1 << 20, 1];
        }),
        &["run past its storage of 6"],
    );
    case("stride-length", with(&|t| t[0].stride = vec![1]), &["differ in length"]);
    case("not-contiguous", with(&|t| t[0].stride = vec![4, 1]), &["not contiguous"]);
    case("negative-shape", with(&|t| t[0].shape = vec![-3, 2]), &["shape is negative"]);
    // Integer storages carry no weights: the weight is then missing.
    case("integer-storage", with(&|t| t[0].storage_class = "IntStorage".into()), &["layers.0.weight"]);
    case("long-storage", with(&|t| t[0].storage_class = "LongStorage".into()), &["layers.0.weight"]);
    // Names from the file are quoted in one-line messages.
    case("newline-in-name", with(&|t| t[0].name = "a\nb".into()), &["tensor name \"a\\nb\" has control characters"]);
    case("path-as-storage-key", with(&|t| t[0].key = "../0".into()), &["storage key \"../0\" is not a plain name"]);
    case("unknown-storage", with(&|t| t[0].storage_class = "ComplexFloatStorage".into()), &["ComplexFloatStorage is not supported"]);
    // Pickles: a short argument tuple (which candle's reader indexes blindly),
    // a string longer than the file, absurd nesting and a memo bomb.
    let storages = |n: usize| (0..n).map(|i| (i.to_string(), vec![0u8; 24])).collect::<Vec<_>>();
    let short_args = [global("torch._utils", "_rebuild_tensor_v2"), b"(J\x00\x00\x00\x00tR".to_vec()].concat();
    case(
        "short-rebuild-args",
        torch_zip(state_dict(&[("w".into(), short_args)]), &storages(1)),
        &["arguments are not a tuple of at least 4"],
    );
    let param = [global("torch._utils", "_rebuild_parameter"), b")R".to_vec()].concat();
    // Beside a plain tensor, so that the dict is taken for a state dict.
    let plain = tensor_pickle(&good[0]);
    case(
        "short-parameter-args",
        torch_zip(state_dict(&[("a".into(), plain), ("w".into(), param)]), &storages(1)),
        &["tensor 'w'", "_rebuild_parameter"],
    );
    let long_string = [&[0x80, 2, b'X'][..], &u32::MAX.to_le_bytes(), b"abc."].concat();
    case("string-past-end", torch_zip(long_string, &[]), &["not a readable pickle", "4294967295 bytes"]);
    let nested = [&[0x80, 2, b'K', 1][..], &vec![0x85; 200_000], b"."].concat();
    case("absurd-nesting", torch_zip(nested, &[]), &["not a readable pickle", "nests objects more than"]);
    // Six levels of 8 copies: 8^6 objects (megabytes) were the check missing.
    let mut bomb = vec![0x80, 2, b']', b'q', 0];
    for _ in 0..6 {
        bomb.push(b'(');
        bomb.extend([b'h', 0].repeat(8));
        bomb.extend([b't', b'q', 0]);
    }
    bomb.push(b'.');
    case("memo-bomb", torch_zip(bomb, &[]), &["not a readable pickle", "copies memoized objects"]);
    let long = [&[0x80, 2, 0x8a, 9][..], &[0xff; 9], b"."].concat();
    case("nine-byte-long", torch_zip(long, &[]), &["not a readable pickle", "9 bytes"]);
    case("unknown-opcode", torch_zip(vec![0x80, 2, 0xff, b'.'], &[]), &["not a readable pickle"]);
    case("empty-pickle", torch_zip(vec![], &[]), &["not a readable pickle"]);
    case("not-a-dict", torch_zip(vec![0x80, 2, b'K', 1, b'.'], &[]), &["not a state dict"]);
}
