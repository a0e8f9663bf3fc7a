//! The CNN with BatchNorm (torchvision's VGG-BN layout) against PyTorch
//! (fixtures/make_cnn_bn.py): a PyTorch state dict loads as it is; eval-mode
//! logits and taps (z after each BatchNorm) match; one training step
//! (batch statistics, running statistics, gradients through them, SGD)
//! leaves the same weights and running statistics.

use crate::common::*;
use candle_core::{Device, Tensor};
use lintrace::checkpoint::{self, CheckpointMeta};
use lintrace::spec::ModelSpec;

fn golden() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("cnn_bn/golden.safetensors"), &Device::Cpu).unwrap()
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
    let (logits, after) = one_sgd_step(&spec(), &initial, &g["x"], &g["y"], 0.1);
    assert!(max_diff(&logits, &g["train_logits"]) < 1e-5, "train logits {}", max_diff(&logits, &g["train_logits"]));
    for (name, t) in &after {
        let want = &g[&format!("after.{name}")];
        assert!(max_diff(t, want) < 1e-5, "{name} after one step: off by {}", max_diff(t, want));
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
