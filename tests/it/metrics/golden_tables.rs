//! The golden values of `fixtures/make_golden.py` and `make_golden_suite.py`
//! (an independent numpy implementation) through the command line and the
//! Parquet tables: `lintrace-analyze --spec --probe` on a folder holding the
//! fixtures' checkpoints A (step 0) and B (step 5), then every row of
//! `layer_metrics` and `model_metrics` read back and compared: the set of
//! rows (no row missing, none extra), their layer names and kinds,
//! `depth_fraction`, `ref_step`, `n_probe`, `probe_hash`, and each value,
//! null exactly where the reference has none (and never NaN).

use crate::common::{analyze_bin, fixture, run_ok};
use lintrace::tables::{Table, Value};
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};

const ANALYZERS: &str =
    "performance,activation_regime,unit_linear_fit,block_linear_fit,linearized_agreement,cka_time,weights,representation";

fn json(rel: &str) -> Json {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

/// A layer row's key: (step, tap, analyzer, metric).
type Key = (i64, i64, String, String);

/// What a row must hold: its value (None: null) within `tol`, or any
/// finite value or null (no reference: `check` false), and its `ref_step`.
struct Want {
    value: Option<f64>,
    tol: f64,
    check: bool,
    ref_step: Option<i64>,
}

fn want(value: &Json, tol: f64) -> Want {
    Want { value: value.as_f64(), tol, check: true, ref_step: None }
}

fn cell_f64(v: &Value, what: &str) -> Option<f64> {
    match v {
        Value::Null => None,
        Value::F64(x) => {
            assert!(x.is_finite(), "{what}: {x} written as a value (undefined values are null)");
            Some(*x)
        }
        other => panic!("{what}: {other:?} is not a float"),
    }
}

/// The final checkpoint of the analysed folder (step 5, step 0 being A).
#[derive(PartialEq)]
enum Final {
    /// `checkpoint_b.safetensors`, golden_suite.json's B.
    B,
    /// `checkpoint_dead.safetensors` (tiny_mlp): taps 1 and 2 constant,
    /// golden_dead.json, with nulls.
    Dead,
}

fn check_model(name: &str, layers: &[(&str, &str)], last: Final) {
    let dir = fixture(&format!("golden/{name}"));
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("checkpoints");
    std::fs::create_dir(&ck).unwrap();
    std::fs::copy(dir.join("checkpoint.safetensors"), ck.join("step_0.safetensors")).unwrap();
    let (file, analyzers) = match last {
        Final::B => ("checkpoint_b.safetensors", ANALYZERS.to_string()),
        // The reference has no linearised variants of the dead checkpoint.
        Final::Dead => ("checkpoint_dead.safetensors", ANALYZERS.replace("linearized_agreement,", "")),
    };
    std::fs::copy(dir.join(file), ck.join("step_5.safetensors")).unwrap();
    let run_id = format!("golden-tables-{name}");
    let mut cmd = analyze_bin();
    cmd.arg(&ck).arg("--spec").arg(dir.join("spec.json")).arg("--probe").arg(dir.join("probe.safetensors"));
    run_ok(cmd.args(["--analyzers", &analyzers, "--device", "cpu", "--quiet", "--run-id", &run_id]));
    let probe = lintrace::probe::load(&dir.join("probe.safetensors")).unwrap();
    let n_taps = layers.len() as i64;

    let g = json(&format!("golden/{name}/golden.json"));
    let suite = json(&format!("golden/{name}/golden_suite.json"));
    let mut expected: BTreeMap<Key, Want> = BTreeMap::new();
    let key = |step: i64, tap: &Json, analyzer: &str, metric: &str| (step, tap.as_i64().unwrap(), analyzer.to_string(), metric.to_string());
    // Step 0 = A: golden.json's per-tap metrics (f32 against float64).
    for w in g["layer_metrics"].as_array().unwrap() {
        expected.insert(key(0, &w["tap"], w["analyzer"].as_str().unwrap(), w["metric"].as_str().unwrap()), want(&w["value"], 1e-5));
    }
    // golden_suite.json's A at step 0; at step 5 its B, or golden_dead.json.
    let dead = json("golden/tiny_mlp/golden_dead.json");
    let tols = [("block_linear_fit", 2e-5), ("representation", 1e-4), ("weights", 1e-5)];
    for (analyzer, tol) in tols {
        let rel = |w: &Json| tol * w["value"].as_f64().map_or(1.0, |v| v.abs().max(1.0));
        for w in suite[analyzer]["A"].as_array().unwrap() {
            expected.insert(key(0, &w["tap"], analyzer, w["metric"].as_str().unwrap()), want(&w["value"], rel(w)));
        }
        let last_rows = if last == Final::B { &suite[analyzer]["B"] } else { &dead[analyzer] };
        for w in last_rows.as_array().unwrap() {
            expected.insert(key(5, &w["tap"], analyzer, w["metric"].as_str().unwrap()), want(&w["value"], rel(w)));
        }
    }
    if last == Final::Dead {
        for w in dead["layer_metrics"].as_array().unwrap() {
            expected.insert(key(5, &w["tap"], w["analyzer"].as_str().unwrap(), w["metric"].as_str().unwrap()), want(&w["value"], 1e-5));
        }
    }
    // CKA between the final checkpoint and A: its cka_to_init, A's
    // cka_to_final (CKA is symmetric); each checkpoint with itself is 1
    // (null where a tap is constant).
    let cka = if last == Final::B { &suite["cka"] } else { &dead["cka"] };
    for c in cka.as_array().unwrap() {
        let itself = if c["value"].is_null() { Json::Null } else { Json::from(1.0) };
        for (step, metric, value, ref_step) in [
            (5, "cka_to_init", c["value"].clone(), 0),
            (0, "cka_to_final", c["value"].clone(), 5),
            (0, "cka_to_init", Json::from(1.0), 0),
            (5, "cka_to_final", itself, 5),
        ] {
            expected.insert(key(step, &c["tap"], "cka_time", metric), Want { ref_step: Some(ref_step), ..want(&value, 1e-4) });
        }
    }
    // Linearised variants of A: agreements exact but where the reference's
    // top-2 logit margin is below f32 resolution (fixtures/README.md), then
    // within one sample and their Δloss and μ unchecked.
    let thin: BTreeSet<(String, i64)> = suite["linearized_min_top2_gap"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["value"].as_f64().unwrap() < 1e-3)
        .map(|r| (r["variant"].as_str().unwrap().to_string(), r["tap"].as_i64().unwrap()))
        .collect();
    let linearized = if last == Final::B { suite["linearized_agreement"].as_array().unwrap().clone() } else { Vec::new() };
    for w in &linearized {
        let metric = w["metric"].as_str().unwrap();
        let variant = ["prefix", "suffix"].into_iter().find(|p| metric.starts_with(&format!("{p}_"))).unwrap_or("tap");
        let is_thin = thin.contains(&(variant.to_string(), w["tap"].as_i64().unwrap()));
        let w2 = if metric.ends_with("agreement") {
            want(&w["value"], if is_thin { 1.0 / probe.len() as f64 + 1e-9 } else { 1e-9 })
        } else {
            Want { check: !is_thin, ..want(&w["value"], 1e-4) }
        };
        expected.insert(key(0, &w["tap"], "linearized_agreement", metric), w2);
    }
    // Step 5's metrics that the reference computes on A only: the same rows,
    // values unchecked.
    let a_only: &[&str] = if last == Final::B { &["activation_regime", "unit_linear_fit", "linearized_agreement"] } else { &[] };
    let step0_only: Vec<Key> = expected.keys().filter(|k| k.0 == 0 && a_only.contains(&k.2.as_str())).cloned().collect();
    for k in step0_only {
        expected.insert((5, k.1, k.2, k.3), Want { value: None, tol: 0.0, check: false, ref_step: None });
    }

    let layer = Table::read(&ck.join("analysis/layer_metrics.parquet"), "layer_metrics").unwrap();
    let col = |t: &Table, c: &str| t.column_index(c).unwrap_or_else(|| panic!("no column {c}"));
    let (ri, si, ti, ni, ki, di, ai, mi, vi, hi, pi, rsi) = (
        col(&layer, "run_id"),
        col(&layer, "step"),
        col(&layer, "tap"),
        col(&layer, "layer_name"),
        col(&layer, "layer_kind"),
        col(&layer, "depth_fraction"),
        col(&layer, "analyzer"),
        col(&layer, "metric"),
        col(&layer, "value"),
        col(&layer, "probe_hash"),
        col(&layer, "n_probe"),
        col(&layer, "ref_step"),
    );
    let mut seen = BTreeSet::new();
    let mut unexpected = Vec::new();
    for r in &layer.rows {
        let k: Key = (r[si].as_i64().unwrap(), r[ti].as_i64().unwrap(), r[ai].as_str().unwrap().into(), r[mi].as_str().unwrap().into());
        let what = format!("{name} {k:?}");
        assert!(seen.insert(k.clone()), "{what}: written twice");
        assert_eq!(r[ri].as_str(), Some(run_id.as_str()), "{what}: run_id");
        let (layer_name, kind) = layers[k.1 as usize];
        assert_eq!((r[ni].as_str(), r[ki].as_str()), (Some(layer_name), Some(kind)), "{what}: layer");
        assert_eq!(r[di].as_f64(), Some((k.1 + 1) as f64 / n_taps as f64), "{what}: depth_fraction");
        assert_eq!(r[hi].as_str(), Some(probe.hash.as_str()), "{what}: probe_hash");
        assert_eq!(r[pi].as_i64(), Some(probe.len() as i64), "{what}: n_probe");
        let got = cell_f64(&r[vi], &what);
        let Some(w) = expected.get(&k) else {
            unexpected.push(format!("{what} = {got:?}"));
            continue;
        };
        assert_eq!(r[rsi].as_i64(), w.ref_step, "{what}: ref_step");
        if !w.check {
            continue;
        }
        match (got, w.value) {
            (Some(a), Some(b)) => assert!((a - b).abs() <= w.tol, "{what}: {a}, numpy {b} (tol {})", w.tol),
            (a, b) => assert_eq!(a, b, "{what}: null where numpy has none, or the reverse"),
        }
    }
    assert!(unexpected.is_empty(), "rows the reference does not have:\n{}", unexpected.join("\n"));
    let missing: Vec<_> = expected.keys().filter(|k| !seen.contains(*k)).collect();
    assert!(missing.is_empty(), "{name}: rows missing from layer_metrics: {missing:?}");

    // model_metrics: performance (A), linear_prefix_depth (A); B's present.
    let vi_layer = vi;
    let model = Table::read(&ck.join("analysis/model_metrics.parquet"), "model_metrics").unwrap();
    let (si, ai, mi, vi) = (col(&model, "step"), col(&model, "analyzer"), col(&model, "metric"), col(&model, "value"));
    let mut rows: BTreeMap<(i64, String, String), Option<f64>> = BTreeMap::new();
    for r in &model.rows {
        let k = (r[si].as_i64().unwrap(), r[ai].as_str().unwrap().to_string(), r[mi].as_str().unwrap().to_string());
        assert_eq!(r[col(&model, "run_id")].as_str(), Some(run_id.as_str()));
        let v = cell_f64(&r[vi], &format!("{name} {k:?}"));
        assert!(rows.insert(k.clone(), v).is_none(), "{name} {k:?}: written twice");
    }
    let m = |step: i64, a: &str, metric: &str| rows.get(&(step, a.into(), metric.into())).copied().flatten();
    let last_perf = if last == Final::B { None } else { Some(&dead["performance"]) };
    for (step, perf) in [(0, Some(&g["performance"])), (5, last_perf)] {
        let Some(perf) = perf else { continue };
        let loss = m(step, "performance", "loss").unwrap();
        assert!((loss - perf["loss"].as_f64().unwrap()).abs() <= 1e-5, "{name} step {step}: loss {loss}");
        assert_eq!(m(step, "performance", "accuracy"), perf["accuracy"].as_f64(), "{name} step {step}: accuracy");
    }
    let mut model_metrics = vec![("performance", "loss"), ("performance", "accuracy")];
    if last == Final::B {
        assert_eq!(
            m(0, "linearized_agreement", "linear_prefix_depth"),
            suite["linear_prefix_depth"].as_f64(),
            "{name} linear_prefix_depth"
        );
        model_metrics.push(("linearized_agreement", "linear_prefix_depth"));
    }
    let want_keys: BTreeSet<(i64, String, String)> =
        [0, 5].into_iter().flat_map(|s| model_metrics.iter().map(move |(a, b)| (s, a.to_string(), b.to_string()))).collect();
    assert_eq!(rows.keys().cloned().collect::<BTreeSet<_>>(), want_keys, "{name}: model_metrics rows");
    // The nulls are there: a run that wrote NaN (or 0) would not pass.
    let nulls = layer.rows.iter().filter(|r| r[vi_layer].as_f64().is_none()).count();
    let want_nulls = expected.values().filter(|w| w.check && w.value.is_none()).count();
    assert_eq!(nulls, want_nulls, "{name}: null values");
    if last == Final::Dead {
        assert!(nulls >= 13, "{name}: only {nulls} nulls");
    }
}

#[test]
fn the_cnn_golden_values_through_the_tables() {
    check_model("tiny_cnn", &[("features.0", "conv2d"), ("features.3", "conv2d"), ("classifier.0", "dense")], Final::B);
}

#[test]
fn the_mlp_golden_values_through_the_tables() {
    check_model("tiny_mlp", &[("layers.0", "dense"), ("layers.2", "dense"), ("layers.4", "dense")], Final::B);
}

/// Taps 1 and 2 constant over the probe: their undefined metrics are
/// null in the tables, as in the reference.
#[test]
fn undefined_values_are_null_in_the_tables() {
    check_model("tiny_mlp", &[("layers.0", "dense"), ("layers.2", "dense"), ("layers.4", "dense")], Final::Dead);
}
