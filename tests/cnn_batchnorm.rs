//! The CNN with BatchNorm (torchvision's VGG-BN layout) against PyTorch
//! (fixtures/make_cnn_bn.py): a PyTorch state dict loads as it is; eval-mode
//! logits and taps (z after each BatchNorm) match; one training step
//! (batch statistics, running statistics, gradients through them, SGD)
//! leaves the same weights and running statistics.

mod common;

use candle_core::{Device, Tensor, Var};
use common::*;
use lintrace::checkpoint::{self, CheckpointMeta};
use lintrace::model::{Model, Weights};
use lintrace::spec::ModelSpec;
use std::collections::BTreeMap;

fn golden() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("cnn_bn/golden.safetensors"), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn spec() -> ModelSpec {
    ModelSpec::from_json(&std::fs::read_to_string(fixture("cnn_bn/spec.json")).unwrap()).unwrap()
}

#[test]
fn a_pytorch_vgg_bn_state_dict_evaluates_as_in_pytorch() {
    let meta = CheckpointMeta { spec: spec(), run_id: "bn".into(), step: 0, epoch: 0.0, samples_seen: 0 };
    let l = checkpoint::load_foreign(&fixture("cnn_bn/initial.safetensors"), Some(&meta), &[]).unwrap();
    let model = l.model(&Device::Cpu).unwrap();
    let g = golden();
    let (logits, taps) = model.forward_with_taps(&g["x"]).unwrap();
    assert!(max_diff(&logits, &g["eval_logits"]) < 1e-5, "eval logits {}", max_diff(&logits, &g["eval_logits"]));
    assert!(max_diff(&taps[0].z, &g["z0"]) < 1e-5 && max_diff(&taps[1].z, &g["z1"]) < 1e-5, "taps");
    let names: Vec<String> = spec().taps().iter().map(|t| t.layer_name.clone()).collect();
    assert_eq!(names, ["features.1", "features.5", "classifier.0"], "a tap is named after the module that produces z");
}

#[test]
fn one_training_step_matches_pytorch() {
    let g = golden();
    let initial = candle_core::safetensors::load(fixture("cnn_bn/initial.safetensors"), &Device::Cpu).unwrap();
    let spec = spec();
    let mut vars = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    for (name, _) in spec.tensor_shapes() {
        let v = Var::from_tensor(&initial[&name]).unwrap();
        tensors.insert(name.clone(), v.as_tensor().clone());
        vars.insert(name, v);
    }
    let model = Model::new(&spec, Weights::new(tensors)).unwrap();
    model.set_training(true);
    let logits = model.logits(&g["x"]).unwrap();
    assert!(max_diff(&logits, &g["train_logits"]) < 1e-5, "train logits {}", max_diff(&logits, &g["train_logits"]));
    let y = g["y"].to_dtype(candle_core::DType::U32).unwrap();
    let grads = candle_nn::loss::cross_entropy(&logits, &y).unwrap().backward().unwrap();
    for (name, v) in &vars {
        if let Some(grad) = grads.get(v.as_tensor()) {
            v.set(&(v.as_tensor() - (grad * 0.1).unwrap()).unwrap()).unwrap();
        } else {
            assert!(lintrace::spec::is_buffer(name), "{name} got no gradient");
        }
    }
    for (name, v) in &vars {
        let want = &g[&format!("after.{name}")];
        assert!(max_diff(v.as_tensor(), want) < 1e-5, "{name} after one step: off by {}", max_diff(v.as_tensor(), want));
    }
}

#[test]
fn a_batchnorm_cnn_trains_resumes_to_the_same_bytes_and_is_analysed() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--model", "cnn", "--conv", "4,M,8", "--dense", "16", "--batch-norm", "--dataset", "digits", "--steps", "20"];
    let train = |root: &std::path::Path, extra: &[&str]| {
        let mut c = train_bin();
        c.args(args).args(["--batch-size", "32", "--probe-size", "64", "--quiet", "--name", "r", "--out"]).arg(root).args(extra);
        c
    };
    run_ok(&mut train(&tmp.path().join("a"), &[]));
    // Killed after step 9, then resumed: running statistics are restored with the weights.
    let out = train(&tmp.path().join("b"), &[]).env("LINTRACE_ABORT_AFTER_STEP", "9").output().unwrap();
    assert_eq!(out.status.code(), Some(75));
    run_ok(&mut train(&tmp.path().join("b"), &["--resume"]));
    let (a, b) = (tmp.path().join("a/r"), tmp.path().join("b/r"));
    let want = files_under(&a.join("checkpoints"), &[]);
    assert_eq!(want, files_under(&b.join("checkpoints"), &[]));
    let last = checkpoint::load(&a.join("checkpoints").join(checkpoint::file_name(20)), None).unwrap();
    let rv: Vec<f32> = last.tensors["features.1.running_var"].to_vec1().unwrap();
    assert!(rv.iter().any(|v| (v - 1.0).abs() > 1e-3), "running statistics were never updated: {rv:?}");
    // num_batches_tracked is there for PyTorch's strict load_state_dict: an
    // int64 scalar, the number of training steps.
    let bytes = std::fs::read(a.join("checkpoints").join(checkpoint::file_name(20))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for bn in ["features.1", "features.5"] {
        let t = st.tensor(&format!("{bn}.num_batches_tracked")).unwrap();
        assert_eq!((t.dtype(), t.shape()), (safetensors::Dtype::I64, &[][..]));
        assert_eq!(i64::from_le_bytes(t.data().try_into().unwrap()), 20);
    }
    run_ok(analyze_bin().arg(&a).args(["--quiet", "--device", "cpu"]));
}
