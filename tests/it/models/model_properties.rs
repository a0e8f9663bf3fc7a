//! Whole-model properties of docs/metrics.md: identity activations are linear
//! everywhere; a block with more input features than samples gets no rows.

use candle_core::{Device, Tensor};
use lintrace::analysis::capture::{self, Shared};
use lintrace::init::{init_params, InitScheme};
use lintrace::probe::{content_hash, Probe};
use lintrace::spec::ModelSpec;
use std::collections::BTreeMap;

fn model(spec: &ModelSpec) -> lintrace::model::Model {
    let mut t = BTreeMap::new();
    for (name, shape, values) in init_params(spec, InitScheme::KaimingNormal, 1.0, 5) {
        t.insert(name, Tensor::from_vec(values, shape, &Device::Cpu).unwrap());
    }
    lintrace::model::build(spec, t, &Device::Cpu).unwrap()
}

fn probe(spec: &ModelSpec, n: usize) -> Probe {
    let d = spec.input_len();
    let inputs: Vec<f32> = Tensor::randn(0f32, 1.0, n * d, &Device::Cpu).unwrap().to_vec1().unwrap();
    let labels: Vec<i64> = (0..n as i64).map(|i| i % spec.num_classes as i64).collect();
    Probe {
        hash: content_hash(&inputs, &labels),
        inputs,
        sample_shape: spec.input_shape.clone(),
        labels,
        indices: (0..n as i64).collect(),
        dataset: "t".into(),
        split: "t".into(),
    }
}

fn run(spec: &ModelSpec, p: &Probe, names: &[&str]) -> (Vec<analyzers::MetricValue>, Vec<String>) {
    let m = model(spec);
    let all: Vec<_> = names.iter().map(|n| analyzers::by_name(n).unwrap()).collect();
    let refs: Vec<&dyn analyzers::Analyzer> = all.iter().map(|a| a.as_ref()).collect();
    let out = capture::run(&m, spec, p, &refs, 32, &Device::Cpu, &Shared::default()).unwrap();
    let mut values = Vec::new();
    let mut notes = Vec::new();
    for r in out {
        let f = r.unwrap();
        values.extend(f.values);
        notes.extend(f.notes);
    }
    (values, notes)
}

#[test]
fn identity_activations_are_linear_everywhere() {
    for text in [
        r#"{"spec_version":1,"kind":"cnn","input_shape":[2,8,8],"num_classes":3,"conv":[4,"M",5],"kernel_size":3,"dense":[6],"activation":"identity"}"#,
        r#"{"spec_version":1,"kind":"mlp","input_shape":[6],"num_classes":4,"hidden":[8,8,8],"activation":"relu","linear_taps":[0,1,2]}"#,
    ] {
        let spec = ModelSpec::from_json(text).unwrap();
        let p = probe(&spec, 120);
        let (v, _) = run(&spec, &p, &["unit_linear_fit", "block_linear_fit", "linearized_agreement"]);
        for m in &v {
            let x = m.value.unwrap();
            match m.metric {
                "nonlinearity" => assert!(x < 1e-5, "{m:?}"),
                "linearity_score" => assert!(x > 1.0 - 1e-5, "{m:?}"),
                name if name.ends_with("agreement") => assert_eq!(x, 1.0, "{m:?}"),
                name if name.ends_with("delta_loss") => assert!(x.abs() < 1e-5, "{m:?}"),
                _ => {}
            }
        }
        let depth = v.iter().find(|m| m.metric == "linear_prefix_depth").unwrap().value.unwrap();
        assert_eq!(depth, (spec.num_taps() - 1) as f64);
    }
}

#[test]
fn a_block_wider_than_the_probe_is_skipped_with_a_note() {
    let spec =
        ModelSpec::from_json(r#"{"spec_version":1,"kind":"mlp","input_shape":[100],"num_classes":2,"hidden":[4,4],"activation":"relu"}"#)
            .unwrap();
    let p = probe(&spec, 50);
    let (v, notes) = run(&spec, &p, &["block_linear_fit"]);
    assert!(v.iter().all(|m| m.tap != Some(0)), "tap 0 has 100 features and 50 samples: no rows");
    assert!(v.iter().any(|m| m.tap == Some(1) && m.metric == "nonlinearity"));
    assert!(notes.iter().any(|n| n.contains("tap 0") && n.contains("100 input features")), "{notes:?}");
}

/// A pass resumed at tap l from the z_l a full pass computed gives the same
/// logits as the full pass, whichever taps are replaced by affine
/// surrogates after l: what makes the linearised variants cheap is exact.
#[test]
fn resumed_passes_equal_full_passes() {
    use lintrace::model::{Affine, Taps};
    for text in [
        r#"{"spec_version":1,"kind":"cnn","input_shape":[2,8,8],"num_classes":3,"conv":[4,"M",5,5,"M"],"kernel_size":3,"dense":[6,7],"activation":"relu"}"#,
        r#"{"spec_version":1,"kind":"mlp","input_shape":[6],"num_classes":4,"hidden":[8,9,7],"activation":"gelu"}"#,
    ] {
        let spec = ModelSpec::from_json(text).unwrap();
        let m = model(&spec);
        let p = probe(&spec, 10);
        let mut shape = vec![p.len()];
        shape.extend_from_slice(&p.sample_shape);
        let x = Tensor::from_vec(p.inputs.clone(), shape, &Device::Cpu).unwrap();
        let taps = spec.taps();
        let affines: Vec<Affine> = taps
            .iter()
            .map(|t| {
                let shape: Vec<usize> = std::iter::once(1).chain(t.shape.iter().copied()).collect();
                Affine {
                    alpha: Tensor::randn(0.5f32, 0.2, shape.clone(), &Device::Cpu).unwrap(),
                    beta: Tensor::randn(0f32, 0.1, shape, &Device::Cpu).unwrap(),
                }
            })
            .collect();
        let n = taps.len();
        let replacing = |set: &[usize]| -> Vec<Option<Affine>> { (0..n).map(|l| set.contains(&l).then(|| affines[l].clone())).collect() };
        let (_, intact) = m.forward_with_taps(&x).unwrap();
        for l in 0..n {
            for set in [vec![l], (l..n).collect::<Vec<_>>(), vec![]] {
                let full: Vec<f32> =
                    m.forward(&x, &mut Taps::linearized(replacing(&set))).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let resumed: Vec<f32> = m
                    .forward_from(l, &intact[l], &mut Taps::linearized(replacing(&set)))
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                for (a, b) in full.iter().zip(&resumed) {
                    assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{text}: tap {l}, replaced {set:?}: {a} vs {b}");
                }
            }
        }
    }
}
