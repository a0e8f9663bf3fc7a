//! Residual networks against PyTorch and torchvision (fixtures/make_resnet.py):
//! torchvision-written state dicts load as they are; eval-mode logits and
//! every tap's z (the post-add sums included) match; one training step
//! (BatchNorm batch statistics, gradients through blocks and shortcuts, SGD)
//! leaves the same weights and running statistics; the presets name every
//! tensor as torchvision does; a pass resumed at any tap gives the same
//! logits; and a ResNet trains, resumes and is analysed from the command line.

use crate::common::*;
use candle_core::{Device, Tensor};
use lintrace::model::{Model, Taps, Weights};
use lintrace::spec::{Arch, ModelSpec};
use std::collections::{BTreeMap, HashMap};

const NETS: [&str; 3] = ["tv_basic", "tv_bottleneck", "cifar_a"];

fn fixture_net(name: &str) -> FixtureNet {
    FixtureNet::new(&format!("resnet/{name}"))
}

#[test]
fn torchvision_state_dicts_evaluate_as_in_pytorch() {
    for net in NETS {
        let g = fixture_net(net).golden();
        let (logits, taps) = fixture_net(net).model().forward_with_taps(&g["x"]).unwrap();
        let d = max_diff(&logits, &g["eval_logits"]);
        assert!(d < 1e-4, "{net}: eval logits off by {d}");
        assert_eq!(taps.len(), fixture_net(net).spec().num_taps());
        assert_eq!(taps.len(), g.keys().filter(|k| k.starts_with('z')).count(), "{net}: one tap per ReLU call");
        for (i, t) in taps.iter().enumerate() {
            let d = max_diff(&t.z, &g[&format!("z{i}")]);
            assert!(d < 1e-4, "{net}: tap {i} z off by {d}");
        }
    }
}

#[test]
fn taps_are_named_after_the_module_that_produces_z() {
    let names: Vec<String> = fixture_net("tv_basic").spec().taps().iter().map(|t| t.layer_name.clone()).collect();
    assert_eq!(&names[..5], ["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer1.1.bn1", "layer1.1.bn2"]);
    let blocks = fixture_net("tv_basic").spec().residual_blocks();
    assert_eq!(blocks.len(), 5);
    assert_eq!((blocks[0].first_tap, blocks[0].last_tap, blocks[0].identity_shortcut), (1, 2, true));
    assert_eq!((blocks[2].name.as_str(), blocks[2].stride, blocks[2].identity_shortcut), ("layer2.0", 2, false));
    let b = fixture_net("tv_bottleneck").spec().residual_blocks();
    assert_eq!((b[0].first_tap, b[0].last_tap, b[0].receptive_field), (1, 3, 3));
}

#[test]
fn one_training_step_matches_pytorch() {
    for net in NETS {
        let g = fixture_net(net).golden();
        let initial = candle_core::safetensors::load(fixture(&format!("resnet/{net}/initial.safetensors")), &Device::Cpu).unwrap();
        let (logits, after) = one_sgd_step(&fixture_net(net).spec(), &initial, &g["x"], &g["y"], 0.1);
        let d = max_diff(&logits, &g["train_logits"]);
        assert!(d < 1e-4, "{net}: train logits off by {d}");
        for (name, t) in &after {
            let want = &g[&format!("after.{name}")];
            let d = max_diff(t, want);
            let moved = max_diff(want, &initial[name]);
            // Tolerance relative to the update: conv1's gradient reaches ~30
            // here, where f32 sums in a different order differ by ~1e-5·|g|.
            assert!(d < 1e-4 * (1.0 + moved), "{net}: {name} after one step off by {d} (moved by {moved})");
        }
    }
}

#[test]
fn presets_name_every_tensor_as_torchvision() {
    let text = std::fs::read_to_string(fixture("resnet/torchvision_names.json")).unwrap();
    let want: HashMap<String, Vec<(String, Vec<usize>)>> = serde_json::from_str(&text).unwrap();
    for arch in ["resnet18", "resnet34", "resnet50"] {
        let spec = ModelSpec {
            spec_version: 1,
            arch: Arch::preset(arch).unwrap(),
            input_shape: vec![3, 224, 224],
            num_classes: 10,
            activation: lintrace::spec::Activation::Relu,
            tap_activations: None,
            leaky_relu_slope: 0.01,
            linear_taps: Default::default(),
        };
        spec.validate().unwrap();
        let mut got = spec.tensor_shapes();
        let mut w = want[arch].clone();
        got.sort();
        w.sort();
        assert_eq!(got, w, "{arch}");
        let last = spec.taps().last().unwrap().shape.clone();
        assert_eq!(last, [if arch == "resnet50" { 2048 } else { 512 }, 7, 7], "{arch}: 224 → 7×7 at the last stage");
    }
    let r20 = ModelSpec { arch: Arch::preset("resnet20").unwrap(), input_shape: vec![3, 32, 32], ..fixture_net("cifar_a").spec() };
    assert_eq!(r20.num_taps(), 19, "resnet20: 1 + 3·3·2 taps");
    // conv1 432 + bn1 32; stage 1: 6·2304 + 6·32; stage 2: 4608 + 5·9216 +
    // 6·64; stage 3: 18432 + 5·36864 + 6·128; fc 64·3 + 3 (He et al.: 0.27M).
    assert_eq!(r20.num_parameters(), 269_267, "resnet20 with 3 classes");
}

/// A pass resumed at tap k from a recorded pass's values gives the logits of
/// the full pass, also inside blocks (where the shortcut needs the block's
/// input) and with a surrogate at the resume tap.
#[test]
fn passes_resume_at_every_tap() {
    for net in NETS {
        let (m, taps) = fixture_net(net).assert_resumes_at_every_tap();
        let mut no_skip = taps[1].clone();
        no_skip.skip = None;
        let err = m.forward_from(1, &no_skip, &mut Taps::off()).err().expect("a mid-block resume needs the block input").to_string();
        assert!(err.contains("block's input"), "{err}");
    }
}

#[test]
fn a_resnet_trains_resumes_to_the_same_bytes_and_is_analysed() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--model", "resnet20", "--dataset", "digits", "--steps", "12", "--batch-size", "16", "--probe-size", "32"];
    let a = train_interrupted_and_resumed(tmp.path(), &args);
    run_ok(analyze_bin().arg(&a).args(["--quiet", "--device", "cpu"]));
    let layer = lintrace::tables::Table::read(&a.join("analysis/layer_metrics.parquet"), "layer_metrics").unwrap();
    for name in analyzers::registry::names().into_iter().filter(|n| !["performance", "mu", "attention"].contains(n)) {
        assert!(rows_of(&layer, &[name]) > 0, "no {name} rows for a resnet");
    }
}

/// Runs the named analyzers on a model over `x`, `y` (chunks of 5, so chunk
/// merging is exercised).
fn analyse(spec: &ModelSpec, model: &Model, x: &Tensor, y: &Tensor, names: &[&str]) -> Vec<analyzers::MetricValue> {
    use lintrace::analysis::capture::{self, Shared};
    let inputs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let labels: Vec<i64> = y.to_dtype(candle_core::DType::I64).unwrap().to_vec1().unwrap();
    let n = labels.len();
    let probe = lintrace::probe::Probe {
        hash: lintrace::probe::content_hash(&inputs, &labels),
        inputs,
        sample_shape: x.dims()[1..].to_vec(),
        labels,
        indices: (0..n as i64).collect(),
        dataset: "fixture".into(),
        split: "test".into(),
    };
    let shared = Shared { init_grams: None, final_grams: None, grams: None, weights: None, init_weights: None, surrogates: &[] };
    let all: Vec<_> = names.iter().map(|n| analyzers::by_name(n).unwrap()).collect();
    let refs: Vec<&dyn analyzers::Analyzer> = all.iter().map(|a| a.as_ref()).collect();
    let out = capture::run(model, spec, &probe, &refs, 5, &Device::Cpu, &shared).unwrap();
    out.into_iter().flat_map(|r| r.unwrap().values).collect()
}

fn block_value(rows: &[analyzers::MetricValue], block: usize, metric: &str) -> Option<Option<f64>> {
    rows.iter().find(|v| v.block == Some(block) && v.metric == metric).map(|v| v.value)
}

/// residual_linear_fit against the numpy reference in fixtures/make_resnet.py.
#[test]
fn residual_linear_fit_matches_numpy() {
    let p = candle_core::safetensors::load(fixture("resnet/cifar_a/residual_probe.safetensors"), &Device::Cpu).unwrap();
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("resnet/cifar_a/residual_golden.json")).unwrap()).unwrap();
    let spec = fixture_net("cifar_a").spec();
    let rows = analyse(&spec, &fixture_net("cifar_a").model(), &p["x"], &p["y"], &["residual_linear_fit"]);
    let blocks = spec.residual_blocks();
    assert_eq!(blocks.len(), 3);
    for (i, b) in blocks.iter().enumerate() {
        let g = &golden[&b.name];
        if g.is_null() {
            assert!(block_value(&rows, i, "linearity_score").is_none(), "{}: an exact fit writes no rows", b.name);
            continue;
        }
        for m in ["nonlinearity", "linearity_score", "linearity_score_residual", "n_rows", "n_features"] {
            let got = block_value(&rows, i, m).unwrap_or_else(|| panic!("{}: no {m} row", b.name));
            match g[m].as_f64() {
                None => assert_eq!(got, None, "{} {m}: null where the shortcut is not the identity", b.name),
                Some(want) => assert_close(got.unwrap(), want, 1e-6 * want.abs().max(1.0), &format!("{} {m}", b.name)),
            }
        }
        assert!(rows.iter().all(|v| v.tap == Some(b.last_tap) || v.block != Some(i)), "a block's rows sit at its output tap");
    }
}

/// docs/metrics.md: a block whose branch output is zero has linearity_score = 1
/// (its output is σ(x) = x, as x is itself post-ReLU); its residual-free
/// target is then zero and the residual score undefined (null).
#[test]
fn a_block_with_a_zero_branch_is_linear() {
    let net = "cifar_a";
    let mut tensors: BTreeMap<String, Tensor> =
        candle_core::safetensors::load(fixture(&format!("resnet/{net}/initial.safetensors")), &Device::Cpu)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
            .collect();
    for t in ["weight", "bias"] {
        let name = format!("layer1.0.bn2.{t}");
        let zero = tensors[&name].zeros_like().unwrap();
        tensors.insert(name, zero);
    }
    let spec = fixture_net(net).spec();
    let model = Model::new(&spec, Weights::new(tensors)).unwrap();
    let p = candle_core::safetensors::load(fixture("resnet/cifar_a/residual_probe.safetensors"), &Device::Cpu).unwrap();
    let rows = analyse(&spec, &model, &p["x"], &p["y"], &["residual_linear_fit"]);
    let score = block_value(&rows, 0, "linearity_score").unwrap().unwrap();
    assert!((score - 1.0).abs() < 1e-6, "linearity_score {score}");
    assert_eq!(block_value(&rows, 0, "linearity_score_residual"), Some(None));
    // The other block with a fit is not linear: the test can fail.
    let other = block_value(&rows, 1, "linearity_score").unwrap().unwrap();
    assert!(other < 0.999, "layer2.0 linearity_score {other}");
}
