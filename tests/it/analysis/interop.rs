//! Checkpoints from any PyTorch run: torch.save zip files (bare state dicts,
//! nested under state_dict/model, fp16/bf16), PyTorch's name wrappers, bare
//! nn.Sequential names, --rename, folders with any file names and steps,
//! presets and run folders as specs. Logits are checked against PyTorch's
//! (fixtures/make_interop.py wrote them) to 1e-5. Architectures lintrace
//! does not rebuild, from activations captured in PyTorch
//! (fixtures/make_captured.py), against numpy on the same activations.

use crate::common::*;
use lintrace::checkpoint::{self, CheckpointMeta};
use lintrace::spec::ModelSpec;
use std::path::Path;

fn interop(rel: &str) -> std::path::PathBuf {
    fixture(&format!("interop/{rel}"))
}

fn golden(key: &str) -> Vec<Vec<f64>> {
    let g: serde_json::Value = serde_json::from_slice(&std::fs::read(interop("golden.json")).unwrap()).unwrap();
    serde_json::from_value(g[key].clone()).unwrap()
}

fn meta(spec: &str) -> CheckpointMeta {
    let spec = ModelSpec::from_json(&std::fs::read_to_string(interop(spec)).unwrap()).unwrap();
    CheckpointMeta { spec, run_id: "x".into(), step: 0, epoch: 0.0, samples_seen: 0 }
}

/// Loads `file` as a foreign checkpoint and compares its logits on the
/// probe with PyTorch's.
fn check_logits(file: &Path, spec: &str, probe: &str, key: &str, renames: &[(String, String)], tol: f64) {
    let l = checkpoint::load_foreign(file, Some(&meta(spec)), renames).unwrap_or_else(|e| panic!("{e:#}"));
    let model = l.model(&candle_core::Device::Cpu).unwrap();
    let p = lintrace::probe::load(&interop(probe)).unwrap();
    let mut shape = vec![p.len()];
    shape.extend_from_slice(&p.sample_shape);
    let x = candle_core::Tensor::from_slice(&p.inputs, shape, &candle_core::Device::Cpu).unwrap();
    let got: Vec<Vec<f32>> = model.logits(&x).unwrap().to_vec2().unwrap();
    let want = golden(key);
    // Every sample and every class: a zip alone would stop at the shorter.
    assert_eq!(got.len(), want.len(), "{}: {} samples' logits, PyTorch has {}", file.display(), got.len(), want.len());
    assert_eq!(got.len(), p.len(), "{}: one row of logits per probe sample", file.display());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), w.len(), "{}: sample {i}: {} logits, PyTorch has {}", file.display(), g.len(), w.len());
        for (g, w) in g.iter().zip(w) {
            assert!((*g as f64 - w).abs() <= tol, "{}: sample {i}: {g} vs PyTorch's {w}", file.display());
        }
    }
}

#[test]
fn pytorch_files_load_and_match_pytorch() {
    check_logits(&interop("mlp_sequential.pt"), "mlp_spec.json", "mlp_probe.safetensors", "mlp", &[], 1e-5);
    check_logits(&interop("mlp_ddp_fp16.pth"), "mlp_spec.json", "mlp_probe.safetensors", "mlp_fp16", &[], 1e-5);
    check_logits(&interop("mlp_compiled_bf16.bin"), "mlp_spec.json", "mlp_probe.safetensors", "mlp_bf16", &[], 1e-5);
    check_logits(&interop("cnn_sequential.pt"), "cnn_spec.json", "cnn_probe.safetensors", "cnn", &[], 1e-5);
    check_logits(&interop("lightning/epoch=3-step=1200.ckpt"), "cnn_spec.json", "cnn_probe.safetensors", "cnn", &[], 1e-5);
    let renames: Vec<(String, String)> = (0..3).map(|i| (format!("net.fc{i}"), format!("layers.{}", 2 * i))).collect();
    check_logits(&interop("hf/checkpoint-500/pytorch_model.bin"), "mlp_spec.json", "mlp_probe.safetensors", "mlp", &renames, 1e-5);
}

#[test]
fn names_that_do_not_match_are_paired_and_a_rename_suggested() {
    let e = checkpoint::load_foreign(&interop("hf/checkpoint-500/pytorch_model.bin"), Some(&meta("mlp_spec.json")), &[]).err().unwrap();
    let msg = format!("{e:#}");
    assert!(!msg.contains('\n'), "{msg}");
    assert!(msg.contains("pytorch_model.bin") && msg.contains("layers.0.weight ↔ net.fc0.weight"), "{msg}");
    assert!(msg.contains("try --rename net.fc0=layers.0 --rename net.fc1=layers.2 --rename net.fc2=layers.4"), "{msg}");
}

#[test]
fn files_that_are_not_state_dicts_are_refused_clearly() {
    for (file, want) in [
        ("pickled_module.pt", "is a pickled torch.nn.modules.container.Sequential, not a state dict: save model.state_dict()"),
        ("optimizer_only.pt", "holds an optimizer's state only"),
    ] {
        let e = checkpoint::load_foreign(&interop(file), Some(&meta("mlp_spec.json")), &[]).err().unwrap();
        let msg = format!("{e:#}");
        assert!(msg.contains(file) && msg.contains(want), "{msg}");
    }
    // Without a spec, a PyTorch file says what to pass.
    let e = checkpoint::load(&interop("mlp_sequential.pt"), None).err().unwrap();
    assert!(format!("{e:#}").contains("pass --spec"), "{e:#}");
}

#[test]
fn a_folder_from_elsewhere_is_analysed_in_step_order() {
    // A Lightning-style and a Trainer-style folder side by side.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("torch_run");
    for (src, dst) in [
        ("mlp_sequential.pt", "epoch=0-step=90.ckpt"),
        ("mlp_ddp_fp16.pth", "epoch=3-step=1200.ckpt"),
        ("mlp_compiled_bf16.bin", "checkpoint-500/pytorch_model.bin"),
    ] {
        let p = dir.join(dst);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(interop(src), p).unwrap();
    }
    let analyze = |extra: &[&str]| {
        let mut c = analyze_bin();
        c.arg(&dir)
            .args(["--spec", interop("mlp_spec.json").to_str().unwrap(), "--probe", interop("mlp_probe.safetensors").to_str().unwrap()])
            .args(["--quiet", "--device", "cpu", "--analyzers", "performance"])
            .args(extra);
        c
    };
    let out = run_ok(&mut analyze(&[]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("analysed 3 checkpoints"), "{}", String::from_utf8_lossy(&out.stdout));
    let t = lintrace::tables::Table::read(&dir.join("analysis/checkpoints.parquet"), "checkpoints").unwrap();
    let si = t.column_index("step").unwrap();
    let steps: Vec<i64> = t.rows.iter().filter_map(|r| r[si].as_i64()).collect();
    assert_eq!(steps, vec![90, 500, 1200]);
    // A user pattern: the epoch instead of the step (checkpoint-500 has none and is reported).
    let out = analyze(&["--step-from", r"epoch=(\d+)", "--force"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("checkpoint-500") && stderr(&out).contains("cannot tell the step"), "{}", stderr(&out));
    let t = lintrace::tables::Table::read(&dir.join("analysis/checkpoints.parquet"), "checkpoints").unwrap();
    let steps: Vec<Option<i64>> = t.rows.iter().map(|r| r[si].as_i64()).collect();
    assert_eq!(steps, vec![None, Some(0), Some(3)]);
}

#[test]
fn specs_come_from_a_file_a_run_folder_or_a_preset() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_mlp_run(tmp.path(), "r", &[]);
    // A lintrace run's checkpoint, renamed as a bare file elsewhere, analysed with the run folder as its spec.
    let dir = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&dir).unwrap();
    let l = checkpoint::load(&run.join("checkpoints").join(checkpoint::file_name(20)), None).unwrap();
    let named: Vec<(String, candle_core::Tensor)> = l.tensors.into_iter().map(|(k, v)| (format!("module.{k}"), v)).collect();
    let data: Vec<_> = named.iter().map(|(n, t)| checkpoint::f32_entry(n, t).unwrap()).collect();
    checkpoint::write_f32_safetensors(&dir.join("final_step_20.safetensors"), &data, Default::default()).unwrap();
    let probe = run.join("probe.safetensors");
    run_ok(analyze_bin().arg(&dir).arg("--spec").arg(&run).arg("--probe").arg(&probe).args([
        "--quiet",
        "--device",
        "cpu",
        "--analyzers",
        "performance",
    ]));
    // A preset needs the shape and classes.
    let out = analyze_bin().arg(&dir).args(["--spec", "cnn", "--probe"]).arg(&probe).args(["--quiet", "--device", "cpu"]).output().unwrap();
    assert!(stderr(&out).contains("a preset needs --num-classes and --input"), "{}", stderr(&out));
    let out = analyze_bin().arg(&dir).args(["--spec", "resnet9000", "--probe"]).arg(&probe).output().unwrap();
    assert!(stderr(&out).contains("neither a spec file, a run folder, nor a preset"), "{}", stderr(&out));
    // The preset `mlp` is lintrace's default MLP (width 128, depth 4): the
    // results computed with the run's spec are not taken for its results,
    // and the error pairs the names by shape.
    let out = analyze_bin()
        .arg(&dir)
        .args(["--spec", "mlp", "--num-classes", "2", "--input", "2", "--probe"])
        .arg(&probe)
        .args(["--quiet", "--device", "cpu", "--analyzers", "performance"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("final_step_20.safetensors") && stderr(&out).contains("layers.0.weight ↔ (none of shape [128, 2])"),
        "{}",
        stderr(&out)
    );
}

/// Copies a captured run of fixtures/captured/ into a temporary folder.
fn captured_run(tmp: &Path, name: &str) -> std::path::PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir_all(dir.join("activations")).unwrap();
    let src = fixture(&format!("captured/{name}"));
    std::fs::copy(src.join("probe.safetensors"), dir.join("probe.safetensors")).unwrap();
    for e in std::fs::read_dir(src.join("activations")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join("activations").join(p.file_name().unwrap())).unwrap();
    }
    dir
}

/// (step, tap, layer_name, metric) → value of an analyzer's rows.
fn layer_rows(dir: &Path, analyzer: &str) -> std::collections::BTreeMap<(i64, i64, String, String), Option<f64>> {
    let t = lintrace::tables::Table::read(&dir.join("analysis/layer_metrics.parquet"), "layer_metrics").unwrap();
    let col = |n: &str| t.column_index(n).unwrap();
    let (s, tap, name, a, m, v) = (col("step"), col("tap"), col("layer_name"), col("analyzer"), col("metric"), col("value"));
    t.rows
        .iter()
        .filter(|r| r[a].as_str() == Some(analyzer))
        .map(|r| {
            let value = match &r[v] {
                lintrace::tables::Value::F64(x) => Some(*x),
                _ => None,
            };
            (
                (
                    r[s].as_i64().unwrap(),
                    r[tap].as_i64().unwrap(),
                    r[name].as_str().unwrap().to_string(),
                    r[m].as_str().unwrap().to_string(),
                ),
                value,
            )
        })
        .collect()
}

#[test]
fn activations_captured_in_pytorch_get_the_activation_metrics_numpy_computes() {
    let tmp = tempfile::tempdir().unwrap();
    let gold: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("captured/golden.json")).unwrap()).unwrap();
    for (name, taps) in [("cnn", vec!["act1", "act2", "se.act", "se.gate"]), ("attn", vec!["mlp.act"])] {
        let dir = captured_run(tmp.path(), name);
        let out = run_ok(analyze_bin().arg(&dir).args(["--device", "cpu"]));
        let err = stderr(&out);
        assert!(err.contains("linearized_agreement does not apply: on activations captured in PyTorch"), "{err}");
        assert!(err.contains("mu does not apply"), "{err}");
        let unit = layer_rows(&dir, "unit_linear_fit");
        let steps = gold[name].as_object().unwrap();
        assert_eq!(steps.len(), 3);
        for (step, g) in steps {
            let step: i64 = step.parse().unwrap();
            for (tap, want) in g["unit_linear_fit"].as_array().unwrap().iter().enumerate() {
                for metric in ["nonlinearity", "mean_unit_r2"] {
                    let key = (step, tap as i64, taps[tap].to_string(), metric.to_string());
                    let got = unit.get(&key).copied().flatten().unwrap_or_else(|| panic!("{name}: no row {key:?}"));
                    let want = want[metric].as_f64().unwrap();
                    assert!((got - want).abs() <= 1e-6 * want.abs() + 1e-12, "{name} {key:?}: {got} vs numpy {want}");
                }
            }
            if let Some(heads) = g.get("attention") {
                let att = layer_rows(&dir, "attention");
                for (h, want) in heads.as_array().unwrap().iter().enumerate() {
                    for metric in ["attention_entropy", "attention_max"] {
                        let got = att[&(step, 0, format!("attn.head{h}"), metric.to_string())].unwrap();
                        assert_close(got, want[metric].as_f64().unwrap(), 1e-9, &format!("{name} step {step} head {h} {metric}"));
                    }
                }
            }
            let mm = lintrace::tables::Table::read(&dir.join("analysis/model_metrics.parquet"), "model_metrics").unwrap();
            let (s, m, v) = (mm.column_index("step").unwrap(), mm.column_index("metric").unwrap(), mm.column_index("value").unwrap());
            for metric in ["accuracy", "loss"] {
                let got = mm.rows.iter().find(|r| r[s].as_i64() == Some(step) && r[m].as_str() == Some(metric)).unwrap();
                let lintrace::tables::Value::F64(got) = got[v] else { panic!("{name}: {metric} is null") };
                assert_close(got, g[metric].as_f64().unwrap(), 1e-6, &format!("{name} step {step} {metric}"));
            }
        }
        // Every activation-only analyzer wrote rows for every step and tap.
        for analyzer in ["activation_regime", "block_linear_fit", "cka_time", "representation", "weights"] {
            let rows = layer_rows(&dir, analyzer);
            let steps: std::collections::BTreeSet<i64> = rows.keys().map(|k| k.0).collect();
            if analyzer == "activation_regime" && name == "attn" {
                assert!(rows.is_empty(), "a tanh tap has no on/off regime");
                continue;
            }
            assert_eq!(steps.into_iter().collect::<Vec<_>>(), vec![0, 1, 8], "{name} {analyzer}");
        }
        // A second analysis has nothing left to do.
        let out = run_ok(analyze_bin().arg(&dir).args(["--device", "cpu", "--quiet"]));
        assert!(String::from_utf8_lossy(&out.stdout).contains("analysed 0 checkpoints"), "{}", String::from_utf8_lossy(&out.stdout));
        // mu against a captured surrogate: the run itself at its final step
        // (its own predictions there: agreement 1, I(F;Y|S) = 0, μ = I(F;Y)).
        let out = run_ok(analyze_bin().arg(&dir).args(["--device", "cpu", "--quiet", "--analyzers", "mu", "--surrogate"]).arg(&dir));
        assert!(stderr(&out).contains("mu: compared on the probe"), "{}", stderr(&out));
        let mm = lintrace::tables::Table::read(&dir.join("analysis/model_metrics.parquet"), "model_metrics").unwrap();
        let col = |n: &str| mm.column_index(n).unwrap();
        let value = |step: i64, metric: &str| {
            let r = mm.rows.iter().find(|r| r[col("step")].as_i64() == Some(step) && r[col("metric")].as_str() == Some(metric)).unwrap();
            assert_eq!(r[col("surrogate")].as_str(), Some(format!("{name}@8").as_str()));
            assert_eq!(r[col("split")].as_str(), Some("probe"));
            match r[col("value")] {
                lintrace::tables::Value::F64(v) => v,
                _ => panic!("{name}: {metric} is null"),
            }
        };
        assert_eq!(value(8, "agreement"), 1.0);
        assert_close(value(8, "mu"), value(8, "i_f_y"), 1e-12, &format!("{name}: mu against itself"));
        assert!(value(0, "agreement") < 1.0, "{name}: step 0 predicts as step 8 does");
    }
}

#[test]
fn a_runs_root_holding_captured_runs_analyses_each() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runs");
    for name in ["cnn", "attn"] {
        captured_run(&root, name);
    }
    // A lintrace run beside them.
    tiny_mlp_run(&root, "mlp", &[]);
    let out = run_ok(analyze_bin().arg(&root).args(["--device", "cpu", "--quiet", "--analyzers", "unit_linear_fit"]));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("in 3 runs"), "{said}");
    for name in ["cnn", "attn"] {
        let steps: std::collections::BTreeSet<i64> = layer_rows(&root.join(name), "unit_linear_fit").keys().map(|k| k.0).collect();
        assert_eq!(steps.into_iter().collect::<Vec<_>>(), vec![0, 1, 8], "{name}");
    }
}

/// Rewrites a safetensors file with `edit` applied to its metadata and
/// tensors (name → (dtype, shape, bytes)).
fn rewrite(
    path: &Path,
    edit: impl FnOnce(
        &mut std::collections::HashMap<String, String>,
        &mut std::collections::BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>,
    ),
) {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut md = header.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: std::collections::BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect();
    edit(&mut md, &mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        tensors.iter().map(|(n, (d, s, b))| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(path, safetensors::serialize(views, Some(md)).unwrap()).unwrap();
}

#[test]
fn bad_activation_files_are_refused_in_one_line_naming_the_file() {
    type Edit = Box<
        dyn Fn(
            &mut std::collections::HashMap<String, String>,
            &mut std::collections::BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>,
        ),
    >;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "version",
            Box::new(|md, _| {
                md.insert("format_version".into(), "2".into());
            }),
            "activations format version 2",
        ),
        (
            "probe",
            Box::new(|md, _| {
                md.insert("probe_hash".into(), "0123456789abcdef".into());
            }),
            "captured on probe 0123456789abcdef",
        ),
        (
            "missing",
            Box::new(|_, t| {
                t.remove("taps.1.a");
            }),
            "tensor 'taps.1.a' is missing",
        ),
        (
            "shape",
            Box::new(|_, t| {
                let e = t.get_mut("logits").unwrap();
                e.1 = vec![e.1[1], e.1[0]];
            }),
            "tensor 'logits' has shape",
        ),
        (
            "layout",
            Box::new(|md, _| {
                let l = md["layout"].replace("\"stride\":2", "\"stride\":1");
                md.insert("layout".into(), l);
            }),
            "maps 6×6 to 6×6, not 3×3",
        ),
        (
            "other taps",
            Box::new(|md, _| {
                let l = md["layout"].replace("se.gate", "se.sigmoid");
                md.insert("layout".into(), l);
            }),
            "its layout differs from the run's first file",
        ),
        (
            "dtype",
            Box::new(|_, t| {
                let e = t.get_mut("taps.0.z").unwrap();
                e.0 = safetensors::Dtype::I32;
            }),
            "tensor 'taps.0.z' has dtype I32",
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (what, edit, message) in cases {
        let dir = captured_run(tmp.path(), "cnn");
        let bad = dir.join("activations/step_00000008.safetensors");
        rewrite(&bad, |md, t| edit(md, t));
        let out = analyze_bin().arg(&dir).args(["--device", "cpu", "--quiet", "--analyzers", "unit_linear_fit"]).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        let line = err.lines().find(|l| l.contains(message)).unwrap_or_else(|| panic!("{what}: no line says '{message}':\n{err}"));
        assert!(line.contains("step_00000008.safetensors"), "{what}: {line}");
        // The other steps are analysed; the bad one has no rows.
        let steps: std::collections::BTreeSet<i64> = layer_rows(&dir, "unit_linear_fit").keys().map(|k| k.0).collect();
        assert_eq!(steps.into_iter().collect::<Vec<_>>(), vec![0, 1], "{what}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
