//! Save a model, load it back: identical tensors and logits.

use candle_core::{Device, Tensor};
use lintrace::checkpoint::{self, CheckpointMeta};
use lintrace::init::{init_params, InitScheme};
use lintrace::spec::ModelSpec;
use std::collections::BTreeMap;

#[test]
fn save_load_gives_identical_logits() {
    let spec = ModelSpec::from_json(
        r#"{"spec_version":1,"kind":"cnn","input_shape":[3,8,8],"num_classes":5,"conv":[6,"M",4],"kernel_size":3,"dense":[7],"activation":"gelu","linear_taps":[1]}"#,
    )
    .unwrap();
    let dev = Device::Cpu;
    let mut tensors = BTreeMap::new();
    for (name, shape, values) in init_params(&spec, InitScheme::KaimingNormal, 1.0, 11) {
        tensors.insert(name, Tensor::from_vec(values, shape, &dev).unwrap());
    }
    let model = lintrace::model::build(&spec, tensors.clone(), &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (4, 3, 8, 8), &dev).unwrap();
    let want = model.logits(&x).unwrap().to_vec2::<f32>().unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(checkpoint::file_name(42));
    let meta = CheckpointMeta { spec: spec.clone(), run_id: "rt".into(), step: 42, epoch: 1.5, samples_seen: 96 };
    checkpoint::save(&path, &meta, &tensors.into_iter().collect::<Vec<_>>()).unwrap();
    let loaded = checkpoint::load(&path, None).unwrap();
    assert_eq!(loaded.meta, meta);
    let got = loaded.model(&dev).unwrap().logits(&x).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(got, want);
}
