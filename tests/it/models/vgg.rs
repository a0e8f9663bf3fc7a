//! torchvision's VGG (fixtures/make_vgg.py): a state dict written by
//! torchvision's own `VGG` class loads as is and evaluates as in PyTorch
//! (BatchNorm, the adaptive average pool, the classifier's Dropout slots);
//! the vgg11/13/16 (± BN) presets name every tensor as torchvision; dropout
//! acts in training only, with masks fixed by the trainer's key.

use crate::common::*;
use candle_core::{Device, Tensor};
use lintrace::checkpoint::{self, CheckpointMeta};
use lintrace::spec::{Arch, ModelSpec};
use std::collections::HashMap;

fn spec() -> ModelSpec {
    ModelSpec::from_json(&std::fs::read_to_string(fixture("vgg/spec.json")).unwrap()).unwrap()
}

fn model() -> lintrace::model::Model {
    let meta = CheckpointMeta { spec: spec(), run_id: "vgg".into(), step: 0, epoch: 0.0, samples_seen: 0 };
    checkpoint::load_foreign(&fixture("vgg/initial.safetensors"), Some(&meta), &[]).unwrap().model(&Device::Cpu).unwrap()
}

#[test]
fn a_torchvision_vgg_state_dict_evaluates_as_in_pytorch() {
    let g = candle_core::safetensors::load(fixture("vgg/golden.safetensors"), &Device::Cpu).unwrap();
    let (logits, taps) = model().forward_with_taps(&g["x"]).unwrap();
    assert!(max_diff(&logits, &g["eval_logits"]) < 1e-4, "logits off by {}", max_diff(&logits, &g["eval_logits"]));
    assert_eq!(taps.len(), 4);
    for (i, t) in taps.iter().enumerate() {
        let z = &g[&format!("z{i}")];
        assert!(max_diff(&t.z, z) < 1e-4, "tap {i} off by {}", max_diff(&t.z, z));
    }
    let names: Vec<String> = spec().taps().iter().map(|t| t.layer_name.clone()).collect();
    assert_eq!(names, ["features.1", "features.5", "classifier.0", "classifier.3"]);
}

#[test]
fn presets_name_every_tensor_as_torchvision() {
    let text = std::fs::read_to_string(fixture("vgg/torchvision_names.json")).unwrap();
    let want: HashMap<String, Vec<(String, Vec<usize>)>> = serde_json::from_str(&text).unwrap();
    for arch in lintrace::spec::presets::of(lintrace::spec::presets::Family::Vgg) {
        let spec = ModelSpec { arch: Arch::preset(arch).unwrap(), input_shape: vec![3, 224, 224], num_classes: 10, ..spec() };
        spec.validate().unwrap();
        let mut got = spec.tensor_shapes();
        let mut w = want[arch].clone();
        got.sort();
        w.sort();
        assert_eq!(got, w, "{arch}");
    }
}

#[test]
fn dropout_acts_in_training_only_with_masks_fixed_by_the_key() {
    let x = Tensor::randn(0f32, 1.0, (4, 3, 16, 16), &Device::Cpu).unwrap();
    // Evaluation mode: no dropout, whatever the key.
    let fresh = model();
    fresh.set_dropout_key(1);
    let e1 = fresh.logits(&x).unwrap();
    fresh.set_dropout_key(2);
    assert_eq!(max_diff(&fresh.logits(&x).unwrap(), &e1), 0.0, "evaluation mode has no dropout");
    let m = model();
    m.set_training(true);
    m.set_dropout_key(7);
    let a = m.logits(&x).unwrap();
    let b = m.logits(&x).unwrap();
    m.set_dropout_key(8);
    let c = m.logits(&x).unwrap();
    assert_eq!(max_diff(&a, &b), 0.0, "the same key draws the same masks");
    assert!(max_diff(&a, &c) > 1e-3, "another key draws other masks");
    let mut no_drop = spec();
    if let Arch::Cnn(lintrace::spec::CnnSpec { dropout, .. }) = &mut no_drop.arch {
        *dropout = None;
    }
    assert!(no_drop.tensor_shapes().iter().any(|(n, _)| n == "classifier.2.weight"), "without dropout: classifier.0, .2, .4");
}
