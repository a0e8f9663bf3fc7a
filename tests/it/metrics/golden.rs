//! lintrace against the independent numpy implementation in
//! `fixtures/make_golden.py`: forward pass (logits and taps) and every
//! analyzer's values on the two golden fixtures.

use crate::common::{assert_close, fixture};
use candle_core::{Device, Tensor};
use lintrace::analysis::capture;
use lintrace::{checkpoint, probe};
use serde_json::Value;

fn golden(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(&format!("golden/{name}/golden.json"))).unwrap()).unwrap()
}

fn check_forward(name: &str, file: &str) {
    let dir = fixture(&format!("golden/{name}"));
    let spec = lintrace::spec::ModelSpec::from_json(&std::fs::read_to_string(dir.join("spec.json")).unwrap()).unwrap();
    let fallback = checkpoint::CheckpointMeta { spec, run_id: "x".into(), step: 0, epoch: 0.0, samples_seen: 0 };
    let loaded = checkpoint::load(&dir.join(file), Some(&fallback)).unwrap();
    let model = loaded.model(&Device::Cpu).unwrap();
    let p = probe::load(&dir.join("probe.safetensors")).unwrap();
    let mut shape = vec![p.len()];
    shape.extend_from_slice(&p.sample_shape);
    let x = Tensor::from_vec(p.inputs.clone(), shape, &Device::Cpu).unwrap();
    let (logits, taps) = model.forward_with_taps(&x).unwrap();
    let g = golden(name);
    let want = g["logits"].as_array().unwrap();
    let got = logits.to_vec2::<f32>().unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (gr, wr)) in got.iter().zip(want).enumerate() {
        let wr = wr.as_array().unwrap();
        assert_eq!(gr.len(), wr.len(), "{name}: sample {i}'s logits");
        for (a, b) in gr.iter().zip(wr) {
            assert_close(*a as f64, b.as_f64().unwrap(), 1e-4, &format!("{name} logit"));
        }
    }
    // Every tap elementwise (numpy's float64 values, taps.safetensors),
    // then the sums of golden.json.
    let want_taps = candle_core::safetensors::load(dir.join("taps.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(want_taps.len(), 2 * taps.len(), "{name}: z and a of every tap");
    assert_eq!(g["taps"].as_array().unwrap().len(), taps.len(), "{name}: taps in golden.json");
    for (l, t) in taps.iter().enumerate() {
        for (what, got) in [("z", &t.z), ("a", &t.a)] {
            let want = &want_taps[&format!("{what}.{l}")];
            assert_eq!(got.dims(), want.dims(), "{name} tap {l} {what}: shape");
            let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            let want: Vec<f64> = want.flatten_all().unwrap().to_vec1().unwrap();
            // f32 against float64: relative to the tap's largest value.
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1.0);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_close(*a as f64, *b, 1e-5 * scale, &format!("{name} tap {l} {what}[{i}]"));
            }
        }
    }
    for t in g["taps"].as_array().unwrap() {
        let l = t["tap"].as_u64().unwrap() as usize;
        let z: Vec<f32> = taps[l].z.flatten_all().unwrap().to_vec1().unwrap();
        let a: Vec<f32> = taps[l].a.flatten_all().unwrap().to_vec1().unwrap();
        // Sums of many terms that cancel: compare against the sum of magnitudes.
        let scale = |v: &[f32]| v.iter().map(|x| x.abs() as f64).sum::<f64>() * 1e-6 + 1e-6;
        assert_close(z.iter().map(|&v| v as f64).sum(), t["z_sum"].as_f64().unwrap(), scale(&z), &format!("{name} tap {l} z_sum"));
        assert_close(a.iter().map(|&v| v as f64).sum(), t["a_sum"].as_f64().unwrap(), scale(&a), &format!("{name} tap {l} a_sum"));
    }
}

#[test]
fn cnn_forward_matches_numpy() {
    check_forward("tiny_cnn", "checkpoint.safetensors");
}

#[test]
fn mlp_forward_matches_numpy() {
    check_forward("tiny_mlp", "checkpoint.safetensors");
}

#[test]
fn pytorch_style_weights_without_metadata_load_with_a_spec() {
    check_forward("tiny_cnn", "weights_only.safetensors");
    check_forward("tiny_mlp", "weights_only.safetensors");
}

fn check_analyzers(name: &str, chunk: usize) {
    let dir = fixture(&format!("golden/{name}"));
    let loaded = checkpoint::load(&dir.join("checkpoint.safetensors"), None).unwrap();
    let model = loaded.model(&Device::Cpu).unwrap();
    let p = probe::load(&dir.join("probe.safetensors")).unwrap();
    // The analyzers golden.json covers (golden_suite.rs covers the rest).
    let all: Vec<_> = ["performance", "activation_regime", "unit_linear_fit"].iter().map(|n| analyzers::by_name(n).unwrap()).collect();
    let refs: Vec<&dyn analyzers::Analyzer> = all.iter().map(|a| a.as_ref()).collect();
    let shared = capture::Shared::default();
    let outcome = capture::run(&model, &loaded.meta.spec, &p, &refs, chunk, &Device::Cpu, &shared).unwrap();
    let g = golden(name);
    let mut rows = Vec::new();
    for (a, o) in all.iter().zip(outcome) {
        for v in o.map(|f| f.values).unwrap_or_default() {
            rows.push((a.name(), v));
        }
    }
    let find = |analyzer: &str, tap: Option<usize>, metric: &str| {
        rows.iter()
            .find(|(a, v)| *a == analyzer && v.tap == tap && v.metric == metric)
            .unwrap_or_else(|| panic!("{name}: no row {analyzer} tap {tap:?} {metric}"))
            .1
            .value
    };
    let perf = &g["performance"];
    assert_close(find("performance", None, "loss").unwrap(), perf["loss"].as_f64().unwrap(), 1e-5, "loss");
    assert_close(find("performance", None, "accuracy").unwrap(), perf["accuracy"].as_f64().unwrap(), 0.0, "accuracy");
    let want = g["layer_metrics"].as_array().unwrap();
    for w in want {
        let tap = w["tap"].as_u64().map(|t| t as usize);
        let got = find(w["analyzer"].as_str().unwrap(), tap, w["metric"].as_str().unwrap());
        match w["value"].as_f64() {
            None => assert_eq!(got, None, "{w}"),
            Some(v) => assert_close(got.unwrap(), v, 1e-5, &w.to_string()),
        }
    }
    // Nothing beyond what the reference computed.
    let layer_rows = rows.iter().filter(|(_, v)| v.tap.is_some()).count();
    assert_eq!(layer_rows, want.len(), "{name}: row count");
}

#[test]
fn analyzers_match_numpy_on_the_cnn() {
    check_analyzers("tiny_cnn", 256);
}

#[test]
fn analyzers_match_numpy_on_the_mlp() {
    check_analyzers("tiny_mlp", 256);
}

#[test]
fn chunking_the_probe_does_not_change_the_numbers() {
    check_analyzers("tiny_cnn", 5);
    check_analyzers("tiny_mlp", 7);
}
