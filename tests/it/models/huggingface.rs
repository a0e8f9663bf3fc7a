//! Hugging Face causal language models read from their own files, checked
//! against `transformers`' own forward pass (fixtures/make_hf.py: logits,
//! every MLP tap, every attention weight and residual stream, to 1e-4), and
//! series of revisions analysed with no spec.

use crate::common::{analyze_bin, fixture, run_ok, stderr};
use candle_core::{DType, Device, Tensor};
use lintrace::model::{build, Model, TapValues};
use lintrace::spec::{Arch, ModelSpec};
use lintrace::tables::{Table, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const FAMILIES: &[&str] =
    &["gpt_neox", "gpt_neox_seq", "gpt2", "gpt2_noprefix", "gpt2_crfm", "llama", "olmo", "olmo2", "llama_sharded", "gpt_neox_bin"];

struct Case {
    spec: ModelSpec,
    model: Model,
    want: HashMap<String, Tensor>,
    ids: Tensor,
}

fn case(name: &str) -> Case {
    let dir = fixture(&format!("hf/{name}"));
    let want = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let ids = want["input_ids"].to_dtype(DType::F32).unwrap();
    let spec = lintrace::hf::config::spec_of(&dir.join("config.json"), ids.dims()[1]).unwrap();
    let Arch::HfCausalLm(arch) = &spec.arch else { panic!("{name}: not a Hugging Face spec") };
    let tensors = lintrace::hf::load::read_weights(&dir, arch).unwrap();
    let model = build(&spec, tensors, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    Case { spec, model, want, ids }
}

/// Largest difference relative to the reference's scale (at least 1).
fn rel_diff(got: &Tensor, want: &Tensor, what: &str) -> f32 {
    assert_eq!(got.elem_count(), want.elem_count(), "{what}: {:?} vs {:?}", got.dims(), want.dims());
    let g: Vec<f32> = got.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap();
    let w: Vec<f32> = want.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap();
    let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
    g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale
}

fn check(name: &str, got: &Tensor, key: &str, want: &HashMap<String, Tensor>) {
    let w = want.get(key).unwrap_or_else(|| panic!("{name}: expected.safetensors has no '{key}'"));
    let d = rel_diff(got, w, &format!("{name} {key}"));
    assert!(d <= 1e-4, "{name}: {key} differs from transformers by {d:e} (relative)");
}

#[test]
fn every_family_matches_transformers_forward_pass() {
    for name in FAMILIES {
        let c = case(name);
        let (logits, rec) = c.model.forward_recorded(&c.ids).unwrap();
        check(name, &logits, "logits", &c.want);
        let depth = c.spec.num_taps();
        let Arch::HfCausalLm(arch) = &c.spec.arch else { unreachable!() };
        let parallel = arch.residual == lintrace::spec::Residual::Parallel;
        let streams = 2 * depth + 1 + if parallel { depth } else { 0 };
        assert_eq!((rec.taps.len(), rec.attention.len(), rec.streams.len()), (depth, depth, streams), "{name}");
        for (i, t) in rec.taps.iter().enumerate() {
            check(name, &t.z, &format!("layers.{i}.z"), &c.want);
            check(name, &t.a, &format!("layers.{i}.a"), &c.want);
            check(name, t.input.as_ref().expect("a full pass records the MLP's input"), &format!("layers.{i}.u"), &c.want);
            check(name, &rec.attention[i], &format!("layers.{i}.attn"), &c.want);
        }
        for (k, s) in rec.streams.iter().enumerate().take(2 * depth + 1) {
            check(name, s, &format!("streams.{k}"), &c.want);
        }
        // A parallel layer's MLP sublayer stream X + mlp(LN2(X)), which the
        // model never forms: X + (out − (X + attn)) from transformers' streams.
        for i in 0..depth {
            if !parallel {
                break;
            }
            let s = |k: usize| &c.want[&format!("streams.{k}")];
            let want = ((s(2 * i) + s(2 * i + 2)).unwrap() - s(2 * i + 1)).unwrap();
            let d = rel_diff(&rec.streams[2 * depth + 1 + i], &want, "mlp stream");
            assert!(d <= 1e-4, "{name}: layer {i}'s MLP sublayer stream differs by {d:e}");
        }
        // Resuming at any tap from its recorded values gives the same logits
        // (what linearized_agreement's variants rely on).
        for (l, from) in rec.taps.iter().enumerate() {
            let resumed = c.model.forward_from(l, from, &mut lintrace::model::Taps::off()).unwrap();
            let d = rel_diff(&resumed, &logits, "resumed");
            assert!(d <= 1e-5, "{name}: resuming at tap {l} changes the logits by {d:e}");
        }
    }
}

#[test]
fn the_gate_made_linear_changes_a_gated_models_logits() {
    // The gate's activation is the tap: replacing σ(z) by the identity
    // (α = 1, β = 0) leaves the bilinear product and must change the logits.
    let c = case("llama");
    let (logits, rec) = c.model.forward_recorded(&c.ids).unwrap();
    let tap: &TapValues = &rec.taps[0];
    let ones = Tensor::ones(tap.z.dims()[1..].to_vec(), DType::F32, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let zeros = ones.zeros_like().unwrap();
    let identity = lintrace::model::Affine { alpha: ones, beta: zeros };
    let replaced = c.model.forward_from(0, tap, &mut lintrace::model::Taps::linearized(vec![Some(identity), None])).unwrap();
    assert!(rel_diff(&replaced, &logits, "identity") > 1e-3, "the SiLU gate made linear should change the logits");
}

#[test]
fn a_text_probe_tokenizes_as_the_tokenizers_package() {
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("hf/text/windows.json")).unwrap()).unwrap();
    let ids = lintrace::hf::text::tokenize(&fixture("hf/text/probe.txt"), &fixture("hf/text/tokenizer.json"), 96).unwrap();
    let expected: Vec<u32> = want["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(ids, expected);
    let err = lintrace::hf::text::tokenize(&fixture("hf/text/probe.txt"), &fixture("hf/text/tokenizer_big.json"), 96).unwrap_err();
    assert!(format!("{err:#}").contains("not this model's tokenizer"), "{err:#}");
}

/// A copy of a fixture folder in a fresh temporary folder (analyses write
/// beside the checkpoints).
fn copy_fixture(name: &str, tmp: &Path) -> PathBuf {
    let dst = tmp.join(name);
    copy_dir(&fixture(&format!("hf/{name}")), &dst);
    dst
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let meta = std::fs::symlink_metadata(&from).unwrap();
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from).unwrap(), &to).unwrap();
        } else if meta.is_dir() {
            copy_dir(&from, &to);
        } else {
            std::fs::copy(&from, &to).unwrap();
        }
    }
}

fn text_probe_args(cmd: &mut std::process::Command) -> &mut std::process::Command {
    cmd.arg("--probe-text").arg(fixture("hf/text/probe.txt")).args(["--context", "16", "--probe-size", "64", "-q"])
}

fn col<'a>(t: &'a Table, row: &'a [Value], name: &str) -> &'a Value {
    &row[t.column_index(name).unwrap_or_else(|| panic!("no column {name}"))]
}

/// (revision name, step, status) per row of checkpoints.parquet.
fn inventory(analysis: &Path) -> Vec<(String, i64, String)> {
    let t = Table::read(&analysis.join("checkpoints.parquet"), "checkpoints").unwrap();
    t.rows
        .iter()
        .map(|r| {
            (
                col(&t, r, "file").as_str().unwrap().to_string(),
                match col(&t, r, "step") {
                    Value::I64(s) => *s,
                    v => panic!("step {v:?}"),
                },
                col(&t, r, "status").as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// (step, tap, metric) → value of the analyzer's rows.
fn values(analysis: &Path, analyzer: &str) -> std::collections::BTreeMap<(i64, Option<i64>, String), Option<f64>> {
    let t = Table::read(&analysis.join("layer_metrics.parquet"), "layer_metrics").unwrap();
    t.rows
        .iter()
        .filter(|r| col(&t, r, "analyzer").as_str() == Some(analyzer))
        .map(|r| {
            let int = |v: &Value| match v {
                Value::I64(x) => Some(*x),
                Value::I32(x) => Some(*x as i64),
                _ => None,
            };
            let value = match col(&t, r, "value") {
                Value::F64(x) => Some(*x),
                _ => None,
            };
            ((int(col(&t, r, "step")).unwrap(), int(col(&t, r, "tap")), col(&t, r, "metric").as_str().unwrap().to_string()), value)
        })
        .collect()
}

#[test]
fn a_revision_series_is_analysed_with_no_spec_and_its_aliases_found() {
    let tmp = tempfile::tempdir().unwrap();
    let series = copy_fixture("series_neox", tmp.path());
    let out = run_ok(text_probe_args(analyze_bin().arg(&series)));
    let analysis = series.join("analysis");
    let inv = inventory(&analysis);
    let names: Vec<(&str, i64, &str)> = inv.iter().map(|(n, s, st)| (n.as_str(), *s, st.as_str())).collect();
    assert_eq!(
        names,
        [("step0", 0, "ok"), ("step1", 1, "ok"), ("step2", 2, "ok"), ("step4", 4, "ok"), ("step8", 8, "ok"), ("step16", 16, "aliased")]
    );
    assert!(stderr(&out).contains("step16") && stderr(&out).contains("same weights as step 8"), "{}", stderr(&out));
    // Every analysed step has the per-tap nonlinearity of both MLPs.
    let fit = values(&analysis, "unit_linear_fit");
    for step in [0, 1, 2, 4, 8] {
        for tap in [0, 1] {
            let v = fit
                .get(&(step, Some(tap), "nonlinearity".to_string()))
                .unwrap_or_else(|| panic!("no nonlinearity at step {step} tap {tap}"));
            assert!(v.is_some_and(|v| (0.0..=1.0).contains(&v)), "step {step} tap {tap}: {v:?}");
        }
    }
    assert!(!values(&analysis, "attention").is_empty(), "attention rows");
    // Every metric row keeps the revision's name beside its step.
    for table in ["layer_metrics", "model_metrics"] {
        let t = Table::read(&analysis.join(format!("{table}.parquet")), table).unwrap();
        let pairs: std::collections::BTreeSet<(i64, String)> = t
            .rows
            .iter()
            .map(|r| (col(&t, r, "step").as_i64().unwrap(), col(&t, r, "revision").as_str().unwrap_or("null").to_string()))
            .collect();
        let want: std::collections::BTreeSet<(i64, String)> = [0, 1, 2, 4, 8].iter().map(|&s| (s, format!("step{s}"))).collect();
        assert_eq!(pairs, want, "{table}");
    }
    // Razzhigaev et al.'s linearity score of each sublayer on the residual
    // stream: with GPT-NeoX's parallel residual both sublayers are fitted
    // from the layer's input (X → X + attn, X → X + mlp), and the layer.
    let t = Table::read(&analysis.join("layer_metrics.parquet"), "layer_metrics").unwrap();
    let scored: std::collections::BTreeSet<String> = t
        .rows
        .iter()
        .filter(|r| col(&t, r, "metric").as_str() == Some("linearity_score"))
        .map(|r| col(&t, r, "layer_name").as_str().unwrap().to_string())
        .collect();
    for i in 0..2 {
        for part in [".attention", ".mlp", ""] {
            let want = format!("gpt_neox.layers.{i}{part}");
            assert!(scored.contains(&want), "no linearity_score for {want}: {scored:?}");
        }
    }
    // mu against the bigram surrogate counted on the text outside the
    // probe's windows: its accuracy on the probe, recomputed here from the
    // stored probe and bigram table.
    let st = candle_core::safetensors::load(analysis.join("probe.safetensors"), &Device::Cpu).unwrap();
    let x: Vec<f32> = st["inputs"].flatten_all().unwrap().to_vec1().unwrap();
    let y: Vec<i64> = st["labels"].flatten_all().unwrap().to_vec1().unwrap();
    let next = lintrace::hf::text::Bigram::load(&analysis.join("bigram.safetensors")).unwrap().next;
    let right = x.iter().zip(&y).filter(|(t, y)| next[**t as usize] as i64 == **y).count();
    let m = Table::read(&analysis.join("model_metrics.parquet"), "model_metrics").unwrap();
    let probe_acc: Vec<f64> = m
        .rows
        .iter()
        .filter(|r| col(&m, r, "metric").as_str() == Some("surrogate_probe_accuracy") && col(&m, r, "surrogate").as_str() == Some("bigram"))
        .map(|r| match col(&m, r, "value") {
            Value::F64(v) => *v,
            v => panic!("{v:?}"),
        })
        .collect();
    assert_eq!(probe_acc.len(), 5, "one bigram mu per analysed revision");
    assert!(probe_acc.iter().all(|&a| (a - right as f64 / y.len() as f64).abs() < 1e-12), "{probe_acc:?} vs {right}/{}", y.len());
    // The probe was stored: a second run without --probe-text reuses it and
    // finds everything done; a different probe is refused.
    let again = run_ok(analyze_bin().arg(&series).arg("-q"));
    let said = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(said.contains("analysed 0 checkpoints"), "{said}");
    let out = analyze_bin()
        .arg(&series)
        .arg("--probe-text")
        .arg(fixture("hf/text/probe.txt"))
        .args(["--context", "8", "--probe-size", "64", "-q"])
        .output()
        .unwrap();
    assert!(!out.status.success() && stderr(&out).contains("was analysed with probe"), "{}", stderr(&out));
}

#[test]
fn the_hub_cache_layout_reads_revisions_from_refs() {
    let tmp = tempfile::tempdir().unwrap();
    let folders = copy_fixture("series_neox", tmp.path());
    let cache = copy_fixture("cache_neox", tmp.path());
    let repo = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).unwrap();
    run_ok(text_probe_args(analyze_bin().arg(&folders)));
    run_ok(text_probe_args(analyze_bin().arg(&repo)));
    let inv = inventory(&repo.join("analysis"));
    let steps: Vec<(String, i64)> = inv.iter().filter(|r| r.2 == "ok").map(|r| (r.0.clone(), r.1)).collect();
    assert_eq!(steps, [("step0".to_string(), 0), ("step1".into(), 1), ("step2".into(), 2), ("step4".into(), 4), ("step8".into(), 8)]);
    // The same weights and probe give the same numbers in both layouts.
    assert_eq!(values(&folders.join("analysis"), "unit_linear_fit"), values(&repo.join("analysis"), "unit_linear_fit"));
}

/// The one error line of a failed analysis, and that no tables were written.
fn fails(cmd: &mut std::process::Command, dir: &Path) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "should fail: {cmd:?}");
    let err = stderr(&out);
    assert!(!dir.join("analysis/layer_metrics.parquet").exists(), "tables written for bad input: {err}");
    err
}

#[test]
fn bad_hugging_face_input_is_one_line_and_writes_no_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let set = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| -> PathBuf {
        let dir = copy_fixture("gpt_neox", &tmp.path().join(name));
        let path = dir.join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        dir
    };
    let text = |d: &Path| {
        let mut c = analyze_bin();
        c.arg(d).arg("--probe-text").arg(fixture("hf/text/probe.txt")).arg("--tokenizer").arg(fixture("hf/text/tokenizer.json"));
        c.args(["--context", "16", "--probe-size", "32", "-q"]);
        c
    };
    let d = set("unknown", &|v| v["model_type"] = "mamba".into());
    let e = fails(&mut text(&d), &d);
    assert!(
        e.contains("config.json") && e.contains("model_type 'mamba' is not supported (lintrace reads gpt_neox, gpt2, llama, olmo, olmo2)"),
        "{e}"
    );
    let d = set("missing", &|v| {
        v.as_object_mut().unwrap().remove("hidden_size");
    });
    assert!(fails(&mut text(&d), &d).contains("'hidden_size' is missing"));
    let d = set("scaled", &|v| v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0}));
    assert!(fails(&mut text(&d), &d).contains("'rope_scaling'"));
    // Weights that do not match the config: the checkpoint fails, named.
    let d = set("wider", &|v| v["intermediate_size"] = 80.into());
    let e = fails(&mut text(&d), &d);
    assert!(e.contains("model.safetensors") || e.contains("gpt_neox/"), "{e}");
    assert!(e.contains("dense_h_to_4h.weight") && e.contains("[80, 32]"), "{e}");
    // A tokenizer whose vocabulary the model cannot embed.
    let d = copy_fixture("gpt_neox", &tmp.path().join("tok"));
    let mut c = analyze_bin();
    c.arg(&d).arg("--probe-text").arg(fixture("hf/text/probe.txt")).arg("--tokenizer").arg(fixture("hf/text/tokenizer_big.json"));
    let e = fails(c.args(["--context", "16", "-q"]), &d);
    assert!(e.contains("tokenizer_big.json") && e.contains("not this model's tokenizer"), "{e}");
    assert!(!d.join("analysis").exists(), "nothing is written for a bad tokenizer");
}

#[test]
fn a_probe_of_int64_token_ids_works_and_says_once_that_mu_has_no_surrogate() {
    // Token windows as Python writes them: inputs and labels int64 [n, T].
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("hf/text/windows.json")).unwrap()).unwrap();
    let ids: Vec<i64> = want["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let (n, t) = (4usize, 16usize);
    let inputs: Vec<i64> = (0..n).flat_map(|w| ids[w * t..(w + 1) * t].to_vec()).collect();
    let labels: Vec<i64> = (0..n).flat_map(|w| ids[w * t + 1..(w + 1) * t + 1].to_vec()).collect();
    let bytes = |v: &[i64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let (xb, yb) = (bytes(&inputs), bytes(&labels));
    let views = vec![
        ("inputs", safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![n, t], &xb).unwrap()),
        ("labels", safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![n, t], &yb).unwrap()),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let probe = tmp.path().join("probe.safetensors");
    std::fs::write(&probe, safetensors::serialize(views, None).unwrap()).unwrap();
    let series = copy_fixture("series_neox", tmp.path());
    let out = run_ok(analyze_bin().arg(&series).arg("--probe").arg(&probe).arg("-q"));
    let err = stderr(&out);
    assert_eq!(err.matches("mu: no surrogate").count(), 1, "{err}");
    let stored = lintrace::probe::load(&series.join("analysis/probe.safetensors")).unwrap();
    assert_eq!(stored.inputs, inputs.iter().map(|&v| v as f32).collect::<Vec<_>>());
    assert_eq!((stored.sample_shape.clone(), stored.labels.clone()), (vec![t], labels));
    let m = Table::read(&series.join("analysis/model_metrics.parquet"), "model_metrics").unwrap();
    assert!(!m.rows.iter().any(|r| col(&m, r, "analyzer").as_str() == Some("mu")), "no mu rows without a surrogate");
}

#[test]
fn a_one_revision_series_is_its_own_cka_reference() {
    // Step 0 is also the final revision: cka_to_init and cka_to_final are
    // each tap's CKA with itself (the driver now computes that revision's
    // Grams once for both references; what that saves is timed in
    // BENCHMARKS.md, not here).
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one");
    copy_dir(&fixture("hf/series_neox/step0"), &one.join("step0"));
    run_ok(text_probe_args(analyze_bin().arg(&one).args(["--analyzers", "cka_time,representation"])));
    let cka = values(&one.join("analysis"), "cka_time");
    let taps = values(&one.join("analysis"), "representation").len();
    assert!(taps > 0);
    assert_eq!(cka.len(), 2 * taps, "{cka:?}");
    for ((step, _, metric), v) in &cka {
        assert_eq!(*step, 0);
        assert!((v.unwrap() - 1.0).abs() < 1e-12, "{metric} {v:?}");
    }
}
