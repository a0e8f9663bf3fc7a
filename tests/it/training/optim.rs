//! lintrace-train's optimizers against PyTorch's, step by step: every
//! config in `fixtures/optim/*.toml` is trained by the real binary with a
//! checkpoint at every step, and each checkpoint, learning rate and loss is
//! compared with the trajectory `fixtures/make_optim.py` computed with
//! torch.optim (SGD, SGD with momentum, Adam with L2 decay, AdamW with its
//! decay groups), torch.optim.lr_scheduler (cosine, linear warm-up, both in
//! sequence) and torch.nn.utils.clip_grad_norm_, in float64, from lintrace's
//! own step-0 weights, on the same data (one full batch per step, so the
//! data order is the order of a sum only).

use crate::common::{fixture, run_ok, train_bin};
use candle_core::{DType, Device, Tensor};
use lintrace::tables::Table;
use std::collections::HashMap;

/// Relative to the largest value of each tensor: lintrace computes in f32,
/// the reference in f64 (they differ by ~2e-7 for SGD, ~1.5e-6 for Adam).
const RTOL: f64 = 1e-5;

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

fn json_list(md: &HashMap<String, String>, key: &str) -> Vec<f64> {
    serde_json::from_str(&md[key]).unwrap_or_else(|e| panic!("metadata {key}: {e}"))
}

fn check(name: &str) {
    let path = fixture(&format!("optim/{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let md = header.metadata().clone().expect("fixture metadata");
    let want = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    let (want_loss, want_lr, scales) = (json_list(&md, "loss"), json_list(&md, "lr"), json_list(&md, "clip_scale"));
    let loose: Vec<String> = serde_json::from_str(&md["loose"]).unwrap();
    let steps = want_lr.len();
    assert!(steps >= 5 && want_loss.len() == steps && scales.len() == steps, "{name}: {steps} steps");
    let clipping = std::fs::read_to_string(fixture(&format!("optim/{name}.toml"))).unwrap().contains("grad_clip");
    if clipping {
        // The clip binds at every step, so clipping is what is compared.
        assert!(scales.iter().all(|&s| s < 0.9), "{name}: the clip does not bind: {scales:?}");
    }

    let root = tempfile::tempdir().unwrap();
    let mut cmd = train_bin();
    cmd.arg("--config").arg(fixture(&format!("optim/{name}.toml")));
    cmd.args(["--ckpt-every", "1", "--quiet", "--name", "r", "--out"]).arg(root.path());
    run_ok(&mut cmd);
    let run = root.path().join("r");

    // Learning rates and losses, from the train log.
    let log = Table::read(&run.join("train_log.parquet"), "train_log").unwrap();
    let col = |c: &str| log.column_index(c).unwrap_or_else(|| panic!("train_log has no {c}"));
    let (si, li, ri) = (col("step"), col("loss"), col("lr"));
    assert_eq!(log.rows.len(), steps, "{name}: train_log rows");
    for (k, row) in log.rows.iter().enumerate() {
        assert_eq!(row[si].as_i64(), Some(k as i64 + 1));
        let lr = row[ri].as_f64().unwrap();
        assert!((lr - want_lr[k]).abs() <= 1e-12 * want_lr[k], "{name} step {}: lr {lr}, PyTorch's scheduler {}", k + 1, want_lr[k]);
        let loss = row[li].as_f64().unwrap();
        assert!((loss - want_loss[k]).abs() <= RTOL * want_loss[k], "{name} step {}: loss {loss}, PyTorch {}", k + 1, want_loss[k]);
    }

    let initial = candle_core::safetensors::load(run.join("checkpoints/step_00000000.safetensors"), &Device::Cpu).unwrap();
    for k in 0..=steps {
        let file = run.join(format!("checkpoints/{}", lintrace::checkpoint::file_name(k as u64)));
        let got = candle_core::safetensors::load(&file, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: step {k}: {e}"));
        let prefix = format!("step{k}.");
        let mut names: Vec<&str> = want.keys().filter_map(|n| n.strip_prefix(&prefix)).collect();
        names.sort();
        let mut got_names: Vec<&str> = got.keys().map(|s| s.as_str()).collect();
        got_names.sort();
        assert_eq!(got_names, names, "{name} step {k}: tensors");
        let mut moved = 0.0f64;
        for t in names {
            let w = &want[&format!("{prefix}{t}")];
            let g = &got[t];
            assert_eq!(g.dims(), w.dims(), "{name} step {k} {t}: shape");
            let (g, w) = (values(g), values(w));
            if k == 0 {
                // The fixture starts from lintrace's step-0 checkpoint.
                assert_eq!(g, w, "{name}: the initial weights changed ({t}); rerun fixtures/make_optim.py");
                continue;
            }
            if loose.iter().any(|l| l == t) {
                // Exact gradient zero (a convolution's bias before a
                // BatchNorm, and that BatchNorm's running mean): under Adam
                // only its rounding noise moves it, by at most ~lr a step.
                let bound = 2.0 * want_lr[..k].iter().sum::<f64>();
                let v0 = values(&initial[t]);
                assert!(g.iter().all(|v| v.is_finite()), "{name} step {k} {t}: not finite");
                if t.ends_with(".bias") {
                    for (a, b) in g.iter().zip(&v0) {
                        assert!((a - b).abs() <= bound, "{name} step {k} {t}: moved {} (bound {bound})", a - b);
                    }
                }
                continue;
            }
            let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-3);
            let prev = values(&want[&format!("step{}.{t}", k - 1)]);
            moved = moved.max(w.iter().zip(&prev).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale);
            for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                assert!(
                    (a - b).abs() <= RTOL * scale,
                    "{name} step {k} {t}[{i}]: lintrace {a}, PyTorch {b} (|diff| {:.3e} > {RTOL} x {scale:.3e})",
                    (a - b).abs()
                );
            }
        }
        if k > 0 {
            // Each step moves the weights far beyond the tolerance.
            assert!(moved > 100.0 * RTOL, "{name} step {k}: the weights barely moved ({moved:.2e})");
        }
    }
}

#[test]
fn sgd_with_weight_decay_and_a_cosine_schedule_matches_pytorch() {
    check("sgd_mlp");
}

#[test]
fn momentum_with_weight_decay_warmup_cosine_and_clipping_matches_pytorch() {
    check("momentum_clip_mlp");
}

#[test]
fn momentum_on_a_cnn_with_batchnorm_matches_pytorch() {
    check("momentum_cnn_bn");
}

#[test]
fn adam_with_l2_decay_and_warmup_matches_pytorch() {
    check("adam_mlp");
}

#[test]
fn adamw_decays_weights_not_biases_as_pytorch_groups_do() {
    check("adamw_mlp");
}

#[test]
fn adamw_with_batchnorm_warmup_cosine_and_clipping_matches_pytorch() {
    check("adamw_clip_cnn_bn");
}
