//! Fuzzing the loaders of everything a user hands lintrace: checkpoints
//! (safetensors and torch.save), probes and model specs. Random bytes, and mutations of valid files
//! (flipped bytes, truncations, rewritten header fields), must give an error
//! or a valid value, never a panic. CI runs a few hundred cases per target;
//! `tests/fuzz/run.sh` runs many more for a bounded time and its findings
//! are recorded in `tests/fuzz/FINDINGS.md`.

use lintrace::checkpoint::{self, CheckpointMeta};
use lintrace::spec::ModelSpec;
use proptest::prelude::*;
use std::sync::OnceLock;

fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

const SPEC: &str = r#"{"spec_version":1,"kind":"cnn","input_shape":[1,4,4],"num_classes":3,"conv":[2,"M"],"kernel_size":3,"dense":[4],"batch_norm":true,"activation":"relu"}"#;

/// A valid checkpoint (of a CNN with BatchNorm, counters included) and a
/// valid probe, as bytes.
fn seeds() -> &'static (Vec<u8>, Vec<u8>) {
    static SEEDS: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let spec = ModelSpec::from_json(SPEC).unwrap();
        let tensors: Vec<(String, candle_core::Tensor)> = spec
            .tensor_shapes()
            .into_iter()
            .map(|(name, shape)| (name, candle_core::Tensor::ones(shape, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap()))
            .collect();
        let meta = CheckpointMeta { spec, run_id: "fuzz".into(), step: 3, epoch: 0.5, samples_seen: 12 };
        let counters: Vec<(String, i64)> =
            meta.spec.batch_norms().into_iter().map(|(bn, _)| (format!("{bn}.num_batches_tracked"), 3)).collect();
        checkpoint::save_with_counters(&dir.path().join("c"), &meta, &tensors, &counters).unwrap();
        let split = lintrace::data::Split { x: vec![0.5; 6 * 16], y: vec![0, 1, 2, 0, 1, 2], sample_len: 16, targets: 1 };
        let probe = lintrace::probe::draw(&split, &[1, 4, 4], 6, 0, "fuzz", "test");
        lintrace::probe::save(&dir.path().join("p"), &probe).unwrap();
        (std::fs::read(dir.path().join("c")).unwrap(), std::fs::read(dir.path().join("p")).unwrap())
    })
}

/// A mutation of `seed`: flipped bytes, a truncation, or a header rewritten
/// with one of its numbers replaced.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Vec<(usize, u8)>),
    Truncate(usize),
    Number { which: usize, value: u64 },
    LengthPrefix(u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8).prop_map(Mutation::Flip),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop_oneof![Just(0u64), Just(u64::MAX), Just(1u64 << 40), 0u64..5000])
            .prop_map(|(which, value)| Mutation::Number { which, value }),
        prop_oneof![Just(u64::MAX), Just(0u64), 0u64..10_000].prop_map(Mutation::LengthPrefix),
    ]
}

fn apply(seed: &[u8], m: &Mutation) -> Vec<u8> {
    let mut b = seed.to_vec();
    match m {
        Mutation::Flip(flips) => {
            for (i, v) in flips {
                let n = b.len();
                b[i % n] ^= v | 1;
            }
        }
        Mutation::Truncate(n) => b.truncate(n % seed.len()),
        Mutation::LengthPrefix(v) => b[..8].copy_from_slice(&v.to_le_bytes()),
        Mutation::Number { which, value } => {
            // Replace the which-th run of digits in the header text.
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            let header = String::from_utf8_lossy(&b[8..8 + n]).into_owned();
            let runs: Vec<(usize, usize)> = {
                let mut v = Vec::new();
                let mut start = None;
                for (i, c) in header.char_indices() {
                    match (c.is_ascii_digit(), start) {
                        (true, None) => start = Some(i),
                        (false, Some(s)) => {
                            v.push((s, i));
                            start = None;
                        }
                        _ => {}
                    }
                }
                v
            };
            if !runs.is_empty() {
                let (s, e) = runs[which % runs.len()];
                let new = format!("{}{}{}", &header[..s], value, &header[e..]);
                let mut out = (new.len() as u64).to_le_bytes().to_vec();
                out.extend_from_slice(new.as_bytes());
                out.extend_from_slice(&b[8 + n..]);
                b = out;
            }
        }
    }
    b
}

/// Loads a checkpoint the way the analyzer does: parse, then build its model.
fn load_checkpoint(bytes: &[u8]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("step_00000003.safetensors");
    std::fs::write(&p, bytes)?;
    let l = checkpoint::load(&p, None)?;
    l.non_finite()?;
    l.model(&candle_core::Device::Cpu)?;
    Ok(())
}

fn load_probe(bytes: &[u8]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("probe.safetensors");
    std::fs::write(&p, bytes)?;
    lintrace::probe::load(&p).map(|_| ())
}

/// The torch.save fixture (a CNN written by PyTorch, fixtures/interop) and
/// its spec.
fn torch_seed() -> &'static (Vec<u8>, CheckpointMeta) {
    static SEED: OnceLock<(Vec<u8>, CheckpointMeta)> = OnceLock::new();
    SEED.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/interop");
        let spec = ModelSpec::from_json(&std::fs::read_to_string(dir.join("cnn_spec.json")).unwrap()).unwrap();
        let meta = CheckpointMeta { spec, run_id: "fuzz".into(), step: 0, epoch: 0.0, samples_seen: 0 };
        (std::fs::read(dir.join("cnn_sequential.pt")).unwrap(), meta)
    })
}

/// Loads `bytes` as a torch.save checkpoint of the fixture's spec. An error
/// must be one line naming the file, and the loader may never hold more than
/// twice the file's size (plus the readers' own buffers).
fn load_torch(bytes: &[u8]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.pt");
    std::fs::write(&p, bytes).unwrap();
    let (result, held) = super::torch_file::peak_memory(|| checkpoint::load(&p, Some(&torch_seed().1)));
    let limit = 2 * bytes.len() + (256 << 10);
    prop_assert!(held <= limit, "held {} bytes at once for a {}-byte file", held, bytes.len());
    if let Err(e) = result {
        let msg = format!("{e:#}");
        prop_assert!(!msg.contains('\n') && msg.contains("model.pt"), "not one line naming the file: {}", msg);
    }
    Ok(())
}

/// The fixture with its pickle (data.pkl) mutated and the zip rewritten, so
/// that the mutation reaches the pickle reader rather than the zip's CRC check.
fn with_pickle(m: &Mutation) -> Vec<u8> {
    let mut entries = super::torch_file::unzip(&torch_seed().0);
    let pkl = entries.iter_mut().find(|(n, _)| n.ends_with("data.pkl")).unwrap();
    pkl.1 = match m {
        Mutation::Number { which, value } => {
            // Replace the which-th BININT1 / BININT argument (offsets, sizes,
            // strides, storage lengths) with a 4- or 8-byte integer.
            let ops: Vec<usize> = pkl.1.iter().enumerate().filter(|(_, &b)| b == b'K').map(|(i, _)| i).collect();
            let at = ops[which % ops.len()];
            [&pkl.1[..at], &super::torch_file::int(*value as i64)[..], &pkl.1[at + 2..]].concat()
        }
        Mutation::LengthPrefix(v) => {
            // A string length (BINUNICODE) replaced.
            let ops: Vec<usize> = pkl.1.iter().enumerate().filter(|(_, &b)| b == b'X').map(|(i, _)| i).collect();
            let at = ops[*v as usize % ops.len()];
            let mut b = pkl.1.clone();
            b[at + 1..at + 5].copy_from_slice(&(*v as u32).to_le_bytes());
            b
        }
        m => apply(&pkl.1, m),
    };
    super::torch_file::zip(&entries)
}

/// A state dict of one tensor whose recorded fields are any of the values
/// that break readers: zero, negative, 2^31, 2^40, i64 extremes.
fn hostile_field() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), Just(-1), Just(i64::MAX), Just(i64::MIN), Just(1 << 31), Just(1 << 40), 0i64..64]
}

proptest! {
    #![proptest_config(cases(200))]

    #[test]
    fn torch_loading_never_panics(m in mutation()) {
        // Mutations of the whole zip (flips and cuts mostly hit the container
        // and its CRCs) and of its pickle alone.
        let (seed, _) = torch_seed();
        match &m {
            Mutation::Flip(_) | Mutation::Truncate(_) => load_torch(&apply(seed, &m))?,
            _ => {}
        }
        load_torch(&with_pickle(&m))?;
    }

    #[test]
    fn torch_tensor_fields_never_panic(
        offset in hostile_field(),
        storage_len in hostile_field(),
        shape in proptest::collection::vec(hostile_field(), 0..4),
        stride in proptest::collection::vec(hostile_field(), 0..4),
        class in prop_oneof![Just("FloatStorage"), Just("HalfStorage"), Just("LongStorage"), Just("IntStorage"), Just("NoStorage")],
    ) {
        let t = super::torch_file::FakeTensor {
            name: "0.weight".into(),
            storage_class: class.into(),
            key: "0".into(),
            storage_len,
            offset,
            shape,
            stride,
        };
        load_torch(&super::torch_file::torch_file(&[t]))?;
    }

    #[test]
    fn checkpoint_loading_never_panics(m in mutation()) {
        let _ = load_checkpoint(&apply(&seeds().0, &m));
    }

    #[test]
    fn probe_loading_never_panics(m in mutation()) {
        let _ = load_probe(&apply(&seeds().1, &m));
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = load_checkpoint(&bytes);
        let _ = load_probe(&bytes);
        let _ = ModelSpec::from_json(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn spec_parsing_never_panics_and_accepted_specs_are_sized(which in any::<usize>(), value in prop_oneof![Just(0u64), Just(u64::MAX), Just(1u64 << 32), 0u64..100_000]) {
        // Replace one number in a valid spec; whatever is accepted must be
        // countable without overflow.
        let digits: Vec<(usize, usize)> = SPEC.match_indices(|c: char| c.is_ascii_digit()).map(|(i, _)| (i, i + 1)).collect();
        let (s, e) = digits[which % digits.len()];
        let text = format!("{}{}{}", &SPEC[..s], value, &SPEC[e..]);
        if let Ok(spec) = ModelSpec::from_json(&text) {
            prop_assert!((spec.num_parameters() as u64) <= lintrace::spec::MAX_ELEMENTS);
            let _ = spec.taps();
        }
    }
}

/// The mutations start from files that load: otherwise the fuzzing would
/// only ever reach the first error path.
#[test]
fn the_seeds_load() {
    load_checkpoint(&seeds().0).unwrap();
    load_probe(&seeds().1).unwrap();
    let (pt, meta) = torch_seed();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.pt"), pt).unwrap();
    checkpoint::load(&dir.path().join("model.pt"), Some(meta)).unwrap();
    // Rewritten with an unmutated pickle, it still loads.
    std::fs::write(dir.path().join("model.pt"), with_pickle(&Mutation::Flip(vec![]))).unwrap();
    checkpoint::load(&dir.path().join("model.pt"), Some(meta)).unwrap();
}
