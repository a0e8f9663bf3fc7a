//! Silent corruption made loud: aliased checkpoints (the same weights under
//! two steps, or in two runs), non-finite weights, and where every row came
//! from (lintrace version, device, precision).

use crate::common::*;
use lintrace::checkpoint;
use lintrace::tables::{Table, Value};
use std::path::Path;

/// Rewrites the checkpoint of step `to` with the weights of step `from`
/// (and its own metadata), and records its hash in run.json: what a trainer
/// that saved stale weights would leave behind.
fn alias_step(run: &Path, from: u64, to: u64) {
    let ck = run.join("checkpoints");
    let src = checkpoint::load(&ck.join(checkpoint::file_name(from)), None).unwrap();
    let dst = checkpoint::load(&ck.join(checkpoint::file_name(to)), None).unwrap();
    let tensors: Vec<(String, candle_core::Tensor)> = src.tensors.into_iter().collect();
    let sha = checkpoint::save(&ck.join(checkpoint::file_name(to)), &dst.meta, &tensors).unwrap();
    let path = run.join("run.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["checkpoint_sha256"][to.to_string()] = sha.into();
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
}

fn column(t: &Table, name: &str) -> Vec<Value> {
    let i = t.column_index(name).unwrap();
    t.rows.iter().map(|r| r[i].clone()).collect()
}

#[test]
fn an_aliased_checkpoint_is_reported_and_not_analysed_as_another_moment() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_mlp_run(tmp.path(), "r", &[]);
    alias_step(&run, 4, 6);
    let out = run_ok(analyze_bin().arg(&run).args(["--quiet", "--device", "cpu", "--analyzers", "performance"]));
    let err = stderr(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(err.lines().any(|l| l.starts_with("warning:") && l.contains("step_00000006") && l.contains("same weights as step 4")), "{err}");
    assert!(stdout.contains("analysed 10 checkpoints") && stdout.contains("1 aliased"), "{stdout}");
    let model = Table::read(&run.join("analysis/model_metrics.parquet"), "model_metrics").unwrap();
    assert!(!column(&model, "step").contains(&Value::I64(6)), "the aliased step was analysed");
    let ck = Table::read(&run.join("analysis/checkpoints.parquet"), "checkpoints").unwrap();
    assert_eq!(ck.rows.len(), 11);
    let steps = column(&ck, "step");
    let row = steps.iter().position(|s| *s == Value::I64(6)).unwrap();
    assert_eq!(column(&ck, "status")[row], Value::Str("aliased".into()));
    assert_eq!(column(&ck, "aliased_with_step")[row], Value::I64(4));
    assert_eq!(column(&ck, "aliased_with_run")[row], Value::Str("r".into()));
    let w = column(&ck, "weights_sha256");
    let four = steps.iter().position(|s| *s == Value::I64(4)).unwrap();
    assert_eq!(w[row], w[four]);
    // Every other checkpoint is distinct and ok.
    let statuses = column(&ck, "status");
    assert_eq!(statuses.iter().filter(|s| **s == Value::Str("ok".into())).count(), 10);
    let mut distinct = w.clone();
    distinct.sort_by_key(|v| v.to_text());
    distinct.dedup();
    assert_eq!(distinct.len(), 10);
}

#[test]
fn a_checkpoint_identical_to_another_runs_is_flagged() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tiny_mlp_run(tmp.path(), "a", &[]);
    // Same seed: the same step-0 weights, expected and only noted.
    let b = tiny_mlp_run(tmp.path(), "b", &["--lr", "0.05"]);
    // A step of b that serves a's weights: flagged.
    let src = checkpoint::load(&a.join("checkpoints").join(checkpoint::file_name(20)), None).unwrap();
    let dst_path = b.join("checkpoints").join(checkpoint::file_name(20));
    let dst = checkpoint::load(&dst_path, None).unwrap();
    let sha = checkpoint::save(&dst_path, &dst.meta, &src.tensors.into_iter().collect::<Vec<_>>()).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(b.join("run.json")).unwrap()).unwrap();
    m["checkpoint_sha256"]["20"] = sha.into();
    std::fs::write(b.join("run.json"), serde_json::to_vec(&m).unwrap()).unwrap();

    let out = run_ok(analyze_bin().arg(tmp.path()).args(["--quiet", "--device", "cpu", "--analyzers", "performance"]));
    let err = stderr(&out);
    assert!(err.lines().any(|l| l.starts_with("note:") && l.contains("same step-0 weights")), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("step_00000020") && warnings[0].contains("step 20 of run a"), "{err}");
    let ck = Table::read(&b.join("analysis/checkpoints.parquet"), "checkpoints").unwrap();
    let with_run = column(&ck, "aliased_with_run");
    assert_eq!(with_run.iter().filter(|v| **v == Value::Str("a".into())).count(), 2, "{with_run:?}");
}

#[test]
fn non_finite_weights_are_refused_and_no_table_holds_nan() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_mlp_run(tmp.path(), "r", &[]);
    let path = run.join("checkpoints").join(checkpoint::file_name(10));
    let l = checkpoint::load(&path, None).unwrap();
    let mut tensors: Vec<(String, candle_core::Tensor)> = l.tensors.into_iter().collect();
    let (name, t) = tensors[0].clone();
    let mut v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v[0] = f32::NAN;
    v[1] = f32::INFINITY;
    tensors[0].1 = candle_core::Tensor::from_vec(v, t.dims(), &candle_core::Device::Cpu).unwrap();
    let sha = checkpoint::save(&path, &l.meta, &tensors).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    m["checkpoint_sha256"]["10"] = sha.into();
    std::fs::write(run.join("run.json"), serde_json::to_vec(&m).unwrap()).unwrap();

    let out = analyze_bin().arg(&run).args(["--quiet", "--device", "cpu"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("step_00000010") && errors[0].contains(&format!("'{name}' holds 2 NaN or infinite")), "{err}");
    for t in ["layer_metrics", "model_metrics"] {
        let table = Table::read(&run.join(format!("analysis/{t}.parquet")), t).unwrap();
        assert!(!column(&table, "step").contains(&Value::I64(10)));
        assert!(column(&table, "value").iter().all(|v| v.as_f64().is_none_or(f64::is_finite)));
    }
}

#[test]
fn every_row_says_which_lintrace_device_and_precision_computed_it() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_mlp_run(tmp.path(), "r", &[]);
    run_ok(analyze_bin().arg(&run).args(["--quiet", "--device", "cpu", "--analyzers", "performance,unit_linear_fit"]));
    for t in ["layer_metrics", "model_metrics"] {
        let table = Table::read(&run.join(format!("analysis/{t}.parquet")), t).unwrap();
        assert!(!table.rows.is_empty());
        assert!(column(&table, "lintrace_version").iter().all(|v| *v == Value::Str(env!("CARGO_PKG_VERSION").into())));
        assert!(column(&table, "device").iter().all(|v| *v == Value::Str("cpu".into())));
        assert!(column(&table, "precision").iter().all(|v| *v == Value::Str("f32/f64".into())));
        assert!(column(&table, "analyzer_version").iter().all(|v| v.as_i64().is_some()));
    }
}
