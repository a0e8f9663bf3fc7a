//! train → analyze → read back, on tiny runs: checkpoint steps, tables and
//! their schemas, Python polars, incremental re-analysis, determinism.

use crate::common::*;
use lintrace::tables::Table;
use std::process::Command;

fn table_bytes(run: &std::path::Path) -> Vec<Vec<u8>> {
    ["layer_metrics", "model_metrics", "runs"].iter().map(|t| std::fs::read(run.join(format!("analysis/{t}.parquet"))).unwrap()).collect()
}

#[test]
fn train_analyze_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runs");
    let a = tiny_mlp_run(&root, "mlp-a", &[]);
    let b = tiny_mlp_run(&root, "mlp-b", &["--lr", "0.05", "--activation", "tanh"]);

    // Log-spaced checkpoints, 8 per decade, plus the final step.
    let steps: Vec<u64> = lintrace::checkpoint::list(&a.join("checkpoints"), false)
        .unwrap()
        .iter()
        .map(|p| lintrace::checkpoint::step_from_file_name(p).unwrap())
        .collect();
    assert_eq!(steps, vec![0, 1, 2, 3, 4, 6, 7, 10, 13, 18, 20]);
    let manifest = lintrace::run::RunManifest::read(&a).unwrap();
    assert_eq!(manifest.status, lintrace::run::Status::Finished);
    assert_eq!(manifest.probe_size, 64);
    let log = Table::read(&a.join("train_log.parquet"), "train_log").unwrap();
    assert_eq!(log.rows.len(), 20);

    let out = run_ok(analyze_bin().arg(&root).args(["--quiet", "--device", "cpu"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("analysed 22 checkpoints in 2 runs"), "{stdout}");

    // Tables match their schemas and hold every (checkpoint, tap, metric).
    let layer = Table::read(&a.join("analysis/layer_metrics.parquet"), "layer_metrics").unwrap();
    // relu MLP, 3 taps: activation_regime 5 metrics + unit_linear_fit 4 metrics per tap.
    assert_eq!(rows_of(&layer, &["activation_regime", "unit_linear_fit"]), 11 * 3 * 9);
    let model = Table::read(&a.join("analysis/model_metrics.parquet"), "model_metrics").unwrap();
    assert_eq!(rows_of(&model, &["performance"]), 11 * 2);
    let layer_b = Table::read(&b.join("analysis/layer_metrics.parquet"), "layer_metrics").unwrap();
    // tanh: no activation_regime rows.
    assert_eq!(rows_of(&layer_b, &["activation_regime", "unit_linear_fit"]), 11 * 3 * 4);
    Table::read(&a.join("analysis/runs.parquet"), "runs").unwrap();

    // Training lowered the probe loss.
    let (mi, si, vi) = (model.column_index("metric").unwrap(), model.column_index("step").unwrap(), model.column_index("value").unwrap());
    let loss_at =
        |s: i64| model.rows.iter().find(|r| r[mi].as_str() == Some("loss") && r[si].as_i64() == Some(s)).unwrap()[vi].as_f64().unwrap();
    assert!(loss_at(20) < loss_at(0), "loss {} -> {}", loss_at(0), loss_at(20));

    // Python polars reads every table with the declared types and joins them.
    let py = Command::new("python3").arg(repo().join("tests/python/check_tables.py")).arg(&root).output().expect("python3 runs");
    assert!(
        py.status.success(),
        "python polars check failed (install with `pip install -r tests/python/requirements.txt`):\n{}\n{}",
        String::from_utf8_lossy(&py.stdout),
        String::from_utf8_lossy(&py.stderr)
    );

    // Re-analysis computes nothing and leaves the metric tables byte-identical.
    let before = table_bytes(&a);
    let out = run_ok(analyze_bin().arg(&root).args(["--quiet", "--device", "cpu"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("analysed 0 checkpoints"));
    let after = table_bytes(&a);
    assert_eq!(before[0], after[0]);
    assert_eq!(before[1], after[1]);

    // --force with a selected analyzer recomputes only its rows and keeps
    // every other analyzer's.
    let out = run_ok(analyze_bin().arg(&a).args(["--quiet", "--device", "cpu", "--force", "--analyzers", "performance"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("analysed 11 checkpoints"));
    assert_eq!(table_bytes(&a)[0], before[0], "layer rows untouched");
    let out = run_ok(analyze_bin().arg(&a).args(["--quiet", "--device", "cpu"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("analysed 0 checkpoints"));
    assert_eq!(Table::read(&a.join("analysis/model_metrics.parquet"), "model_metrics").unwrap().rows, model.rows);
}

#[test]
fn training_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tiny_mlp_run(&tmp.path().join("one"), "same", &["--init", "orthogonal"]);
    let b = tiny_mlp_run(&tmp.path().join("two"), "same", &["--init", "orthogonal"]);
    for step in [0u64, 7, 20] {
        let f = lintrace::checkpoint::file_name(step);
        assert_eq!(std::fs::read(a.join("checkpoints").join(&f)).unwrap(), std::fs::read(b.join("checkpoints").join(&f)).unwrap(), "{f}");
    }
    let c = tiny_mlp_run(&tmp.path().join("three"), "same", &["--init", "orthogonal", "--seed", "1"]);
    let f = lintrace::checkpoint::file_name(20);
    assert_ne!(std::fs::read(a.join("checkpoints").join(&f)).unwrap(), std::fs::read(c.join("checkpoints").join(&f)).unwrap());
}

#[test]
fn cnn_on_digits_trains_and_analyses() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runs");
    run_ok(
        train_bin()
            .args(["--model", "cnn", "--conv", "8,M,8,M", "--dense", "16", "--dataset", "digits", "--steps", "6", "--batch-size", "32"])
            .args([
                "--augment",
                "--optimizer",
                "adamw",
                "--weight-decay",
                "0.01",
                "--lr",
                "0.01",
                "--lr-schedule",
                "warmup-cosine",
                "--warmup-steps",
                "2",
            ])
            .args(["--probe-size", "100", "--ckpt-per-octave", "2", "--quiet", "--name", "cnn"])
            .arg("--out")
            .arg(&root),
    );
    let run = root.join("cnn");
    let steps: Vec<u64> = lintrace::checkpoint::list(&run.join("checkpoints"), false)
        .unwrap()
        .iter()
        .map(|p| lintrace::checkpoint::step_from_file_name(p).unwrap())
        .collect();
    assert_eq!(steps, vec![0, 1, 2, 3, 4, 6]);
    run_ok(analyze_bin().arg(&run).args(["--quiet", "--device", "cpu", "--chunk-size", "33"]));
    let layer = Table::read(&run.join("analysis/layer_metrics.parquet"), "layer_metrics").unwrap();
    // 3 taps (2 conv, 1 dense), 9 metrics each, 6 checkpoints.
    assert_eq!(rows_of(&layer, &["activation_regime", "unit_linear_fit"]), 6 * 3 * 9);
    let ni = layer.column_index("layer_name").unwrap();
    assert_eq!(layer.rows[0][ni].as_str(), Some("features.0"));
    // A PyTorch user can load the checkpoint by its module names.
    let st = std::fs::read(run.join("checkpoints/step_00000006.safetensors")).unwrap();
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&st).unwrap().names().into_iter().map(String::from).collect();
    for n in ["features.0.weight", "features.3.bias", "classifier.0.weight", "classifier.2.bias"] {
        assert!(names.contains(&n.to_string()), "{n} in {names:?}");
    }
}

#[test]
fn a_new_final_checkpoint_recomputes_only_cka_to_final() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_mlp_run(tmp.path(), "r", &[]);
    let last = run.join("checkpoints/step_00000020.safetensors");
    let held = tmp.path().join("held.safetensors");
    std::fs::rename(&last, &held).unwrap();
    // As while the run was still training: run.json has not recorded step 20.
    let manifest = run.join("run.json");
    let full = std::fs::read_to_string(&manifest).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&full).unwrap();
    m["checkpoint_sha256"].as_object_mut().unwrap().remove("20").unwrap();
    std::fs::write(&manifest, serde_json::to_string(&m).unwrap()).unwrap();
    run_ok(analyze_bin().arg(&run).args(["--quiet", "--device", "cpu"]));
    let before = Table::read(&run.join("analysis/layer_metrics.parquet"), "layer_metrics").unwrap();
    let refs = |t: &Table| -> Vec<i64> {
        let (mi, ri) = (t.column_index("metric").unwrap(), t.column_index("ref_step").unwrap());
        t.rows.iter().filter(|r| r[mi].as_str() == Some("cka_to_final")).map(|r| r[ri].as_i64().unwrap()).collect()
    };
    assert!(refs(&before).iter().all(|&s| s == 18));

    // The run gains step 20: every checkpoint's cka_time is redone against it,
    // step 20 gets everything, and nothing else is recomputed.
    std::fs::rename(&held, &last).unwrap();
    std::fs::write(&manifest, full).unwrap();
    let out = run_ok(analyze_bin().arg(&run).args(["--quiet", "--device", "cpu"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("analysed 11 checkpoints"), "{stdout}");
    let others = analyzers::registry::names().len() - 1;
    assert!(
        stdout.contains(&format!("({} analyzer results already present)", 10 * others)),
        "10 old checkpoints × {others} analyzers other than cka_time: {stdout}"
    );
    let after = Table::read(&run.join("analysis/layer_metrics.parquet"), "layer_metrics").unwrap();
    assert!(refs(&after).iter().all(|&s| s == 20));
    let (si, ai) = (after.column_index("step").unwrap(), after.column_index("analyzer").unwrap());
    let keep = |t: &Table| -> Vec<Vec<lintrace::tables::Value>> {
        t.rows.iter().filter(|r| r[si].as_i64() != Some(20) && r[ai].as_str() != Some("cka_time")).cloned().collect()
    };
    assert_eq!(keep(&before), keep(&after));
}

#[test]
fn partly_linear_surrogates_and_teacher_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let main = tiny_mlp_run(tmp.path(), "main", &[]);
    // A partly linear surrogate (taps 0..=1 linear) trained on the main
    // network's final predictions.
    let teacher = format!("teacher:{}", main.display());
    let sur = tiny_mlp_run(tmp.path(), "plin", &["--linear-taps", "0,1", "--targets", &teacher]);
    let m = lintrace::run::RunManifest::read(&sur).unwrap();
    assert_eq!(m.config.targets, teacher);
    assert_eq!(m.spec["linear_taps"], serde_json::json!([0, 1]));

    let same = format!("{}@same", sur.display());
    run_ok(
        analyze_bin()
            .arg(&main)
            .args(["--quiet", "--device", "cpu", "--analyzers", "mu", "--surrogate", "linear", "--surrogate"])
            .arg(&sur)
            .arg("--surrogate")
            .arg(&same),
    );
    let model = Table::read(&main.join("analysis/model_metrics.parquet"), "model_metrics").unwrap();
    let (si, mi, ni, pi) = (
        model.column_index("surrogate").unwrap(),
        model.column_index("metric").unwrap(),
        model.column_index("n_samples").unwrap(),
        model.column_index("split").unwrap(),
    );
    let mus: Vec<(&str, i64, &str)> = model
        .rows
        .iter()
        .filter(|r| r[mi].as_str() == Some("mu"))
        .map(|r| (r[si].as_str().unwrap(), r[ni].as_i64().unwrap(), r[pi].as_str().unwrap()))
        .collect();
    // 11 checkpoints × 3 surrogates, on the whole 128-sample test split.
    assert_eq!(mus.len(), 33);
    for name in ["linear", "plin@20", "plin@same"] {
        assert_eq!(mus.iter().filter(|m| m.0 == name).count(), 11, "{name}");
    }
    assert!(mus.iter().all(|m| m.1 == 128 && m.2 == "test"));

    let out = train_bin()
        .args(["--model", "mlp", "--dataset", "sinusoid-2d", "--steps", "2", "--quiet", "--targets", "teacher:/no/such/run"])
        .arg("--out")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/no/such/run"), "{}", stderr(&out));
}
