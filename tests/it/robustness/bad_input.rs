//! Bad input: one clear line naming the file and the problem, no panic, no
//! partial output, and the other checkpoints still analysed.

use crate::common::*;
use lintrace::tables::Table;

fn no_panic(o: &std::process::Output) {
    let err = stderr(o);
    assert!(!err.contains("panicked"), "panic: {err}");
}

/// Analyses `run` (extra flags `args`) expecting a partial failure: no
/// panic, exit status 1, and exactly `n` `error:` lines, which it returns.
fn failing_analysis(run: &std::path::Path, args: &[&str], n: usize) -> Vec<String> {
    let out = analyze_bin().arg(run).args(["--quiet", "--device", "cpu"]).args(args).output().unwrap();
    no_panic(&out);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines: Vec<String> = stderr(&out).lines().filter(|l| l.starts_with("error:")).map(String::from).collect();
    assert_eq!(lines.len(), n, "{}", stderr(&out));
    lines
}

#[test]
fn truncated_and_corrupt_checkpoints_do_not_stop_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_mlp_run(tmp.path(), "r", &[]);
    let ck = run.join("checkpoints");
    let truncated = ck.join("step_00000004.safetensors");
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = ck.join("step_00000006.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors file at all").unwrap();

    let out = analyze_bin().arg(&run).args(["--quiet", "--device", "cpu"]).output().unwrap();
    no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 2, "{err}");
    // The run recorded every checkpoint's SHA-256 as it was written: a
    // changed file is caught before it is parsed.
    for f in ["step_00000004.safetensors", "step_00000006.safetensors"] {
        assert!(lines.iter().any(|l| l.contains(f) && l.contains("SHA-256") && l.contains("recorded in run.json")), "{err}");
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 failed"));
    // The 9 good checkpoints were analysed and written.
    let model = Table::read(&run.join("analysis/model_metrics.parquet"), "model_metrics").unwrap();
    assert_eq!(rows_of(&model, &["performance"]), 9 * 2);
    // No temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(run.join("analysis"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".lintrace-tmp"))
        .collect();
    assert!(leftovers.is_empty());

    // Without recorded hashes (a run from an older lintrace), the same files
    // are refused by the parser, with the same one line each.
    let manifest = run.join("run.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_eq!(m["checkpoint_sha256"].as_object().map(|o| o.len()), Some(11), "every checkpoint's hash is recorded");
    m.as_object_mut().unwrap().remove("checkpoint_sha256");
    std::fs::write(&manifest, serde_json::to_string(&m).unwrap()).unwrap();
    let lines = failing_analysis(&run, &[], 2);
    for f in ["step_00000004.safetensors", "step_00000006.safetensors"] {
        assert!(lines.iter().any(|l| l.contains(f) && l.contains("not a valid safetensors file")), "{lines:?}");
    }

    // Once repaired, only the two missing checkpoints are computed.
    let good = tiny_mlp_run(&tmp.path().join("again"), "r", &[]);
    for s in ["step_00000004.safetensors", "step_00000006.safetensors"] {
        std::fs::copy(good.join("checkpoints").join(s), ck.join(s)).unwrap();
    }
    let out = run_ok(analyze_bin().arg(&run).args(["--quiet", "--device", "cpu"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("analysed 2 checkpoints"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn wrong_shape_and_missing_tensor_name_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("torch");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("golden/tiny_mlp/weights_only.safetensors"), dir.join("epoch_3.safetensors")).unwrap();
    let spec_text = std::fs::read_to_string(fixture("golden/tiny_mlp/spec.json")).unwrap();
    let probe = fixture("golden/tiny_mlp/probe.safetensors");

    // Works with the right spec.
    let spec = tmp.path().join("spec.json");
    std::fs::write(&spec, &spec_text).unwrap();
    run_ok(analyze_bin().arg(&dir).arg("--spec").arg(&spec).arg("--probe").arg(&probe).args(["--quiet", "--device", "cpu"]));
    let model = Table::read(&dir.join("analysis/model_metrics.parquet"), "model_metrics").unwrap();
    assert_eq!(model.rows[0][1].as_i64(), Some(3), "step from the file name");

    // A wider last hidden layer: shape mismatch on layers.4.weight.
    let wrong = tmp.path().join("wrong.json");
    let with = |hidden: serde_json::Value, acts: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_str(&spec_text).unwrap();
        v["hidden"] = hidden;
        v["tap_activations"] = acts;
        v.to_string()
    };
    std::fs::write(&wrong, with(serde_json::json!([7, 6, 9]), serde_json::json!(["gelu", "tanh", "leaky_relu"]))).unwrap();
    let out = analyze_bin()
        .arg(&dir)
        .arg("--spec")
        .arg(&wrong)
        .arg("--probe")
        .arg(&probe)
        .args(["--quiet", "--device", "cpu", "--force"])
        .output()
        .unwrap();
    no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("epoch_3.safetensors") && err.contains("tensor 'layers.4.weight' has shape [5, 6] but the spec needs [9, 6]"),
        "{err}"
    );

    // One more hidden layer: a missing tensor.
    let deeper = tmp.path().join("deeper.json");
    std::fs::write(&deeper, with(serde_json::json!([7, 6, 5, 5]), serde_json::Value::Null)).unwrap();
    let out = analyze_bin()
        .arg(&dir)
        .arg("--spec")
        .arg(&deeper)
        .arg("--probe")
        .arg(&probe)
        .args(["--quiet", "--device", "cpu", "--force"])
        .output()
        .unwrap();
    no_panic(&out);
    let err = stderr(&out);
    assert!(
        err.contains("epoch_3.safetensors")
            && err.contains("layers.6.weight ↔ (none of shape [5, 5])")
            && err.contains("layers.8.weight ↔ layers.6.weight"),
        "{err}"
    );
}

#[test]
fn malformed_spec_unknown_analyzer_and_missing_data_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "{\"spec_version\": 1, \"kind\": \"mlp\"").unwrap();
    let out = analyze_bin()
        .arg(tmp.path())
        .arg("--spec")
        .arg(&bad)
        .arg("--probe")
        .arg(fixture("golden/tiny_mlp/probe.safetensors"))
        .output()
        .unwrap();
    no_panic(&out);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("bad.json") && err.contains("malformed model spec"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = analyze_bin().arg(tmp.path()).args(["--analyzers", "performance,no_such"]).output().unwrap();
    no_panic(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown analyzer 'no_such' (registered: performance, activation_regime, unit_linear_fit"),
        "{}",
        stderr(&out)
    );

    let out = train_bin()
        .args(["--dataset", "image-folder", "--data-dir"])
        .arg(tmp.path().join("nope"))
        .arg("--out")
        .arg(tmp.path())
        .output()
        .unwrap();
    no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("nope") && err.contains("expected ROOT/train/<class>/<image>"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = train_bin().args(["--model", "resnet"]).arg("--out").arg(tmp.path()).output().unwrap();
    assert!(stderr(&out).contains("unknown model 'resnet'"), "{}", stderr(&out));

    let out =
        train_bin().args(["--dataset", "cifar10", "--data-dir"]).arg(tmp.path()).arg("--out").arg(tmp.path().join("o")).output().unwrap();
    assert!(stderr(&out).contains("data_batch_1.bin"), "{}", stderr(&out));

    let out = analyze_bin().arg(tmp.path().join("missing")).output().unwrap();
    assert!(stderr(&out).contains("missing: does not exist"), "{}", stderr(&out));

    // A setting the chosen optimizer would ignore is refused, not dropped.
    let out = train_bin().args(["--optimizer", "sgd", "--momentum", "0.9", "--out"]).arg(tmp.path().join("m")).output().unwrap();
    no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("momentum applies to optimizer \"momentum\""), "{}", stderr(&out));
    assert!(!tmp.path().join("m").exists(), "nothing written");
}

/// A reader that stops early (`| head`) ends the listing quietly, without
/// a panic message.
#[test]
fn a_closed_output_pipe_is_not_a_panic() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let sweep = tmp.path().join("wide.toml");
    let seeds: Vec<String> = (0..4000).map(|s| s.to_string()).collect();
    std::fs::write(&sweep, format!("[base]\nmodel = \"mlp\"\ndataset = \"sinusoid-2d\"\n[grid]\nseed = [{}]\n", seeds.join(", "))).unwrap();
    let mut child = train_bin()
        .args(["sweep"])
        .arg(&sweep)
        .arg("--out")
        .arg(tmp.path())
        .arg("--dry-run")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    no_panic(&out);
    let listed_all = out.status.success();
    assert!(!listed_all || stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn an_existing_run_is_not_overwritten_by_accident() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_mlp_run(tmp.path(), "r", &[]);
    let out = train_bin()
        .args(["--model", "mlp", "--dataset", "sinusoid-2d", "--steps", "2", "--name", "r", "--quiet"])
        .arg("--out")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("run already exists"));
}

#[test]
fn an_unreadable_table_is_reported_and_force_starts_afresh() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_mlp_run(tmp.path(), "r", &[]);
    run_ok(analyze_bin().arg(&run).args(["--quiet", "--device", "cpu", "--analyzers", "performance"]));
    let table = run.join("analysis/layer_metrics.parquet");
    std::fs::write(&table, b"PAR1 truncated").unwrap();
    let out = analyze_bin().arg(&run).args(["--quiet", "--device", "cpu", "--analyzers", "performance"]).output().unwrap();
    no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("layer_metrics.parquet") && err.contains("unreadable"), "{err}");
    run_ok(analyze_bin().arg(&run).args(["--quiet", "--device", "cpu", "--analyzers", "performance", "--force"]));
    let model = Table::read(&run.join("analysis/model_metrics.parquet"), "model_metrics").unwrap();
    assert_eq!(rows_of(&model, &["performance"]), 11 * 2);
    Table::read(&table, "layer_metrics").unwrap();
}

/// A checkpoint that run.json recorded as written but that is gone is
/// reported (one line naming it), not silently skipped; the rest analyse.
#[test]
fn a_missing_checkpoint_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_mlp_run(tmp.path(), "r", &[]);
    let gone = run.join("checkpoints").join("step_00000003.safetensors");
    std::fs::remove_file(&gone).unwrap();
    let lines = failing_analysis(&run, &["--analyzers", "performance"], 1);
    assert!(lines[0].contains("step_00000003.safetensors") && lines[0].contains("missing"), "{lines:?}");
    let model = Table::read(&run.join("analysis/model_metrics.parquet"), "model_metrics").unwrap();
    assert_eq!(rows_of(&model, &["performance"]), 10 * 2);
}
