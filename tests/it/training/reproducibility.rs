//! Same config and seed on the same machine: identical checkpoints, train
//! state and tables, byte for byte, for an MLP and a CNN, with 1 and 2
//! threads. (Between CPU and GPU results differ within stated tolerances:
//! docs/robustness.md, "Reproducibility".)

use crate::common::*;
use std::path::{Path, PathBuf};

fn train(root: &Path, threads: usize, args: &[&str]) -> PathBuf {
    let mut cmd = train_bin();
    cmd.env("RAYON_NUM_THREADS", threads.to_string()).args(args).args(["--quiet", "--name", "r", "--out"]).arg(root);
    run_ok(&mut cmd);
    root.join("r")
}

/// Analyses a copy of `run` with every analyzer on `threads` threads and
/// returns the table files' bytes.
fn analyse_copy(run: &Path, dest: &Path, threads: usize) -> Vec<(String, Vec<u8>)> {
    let copy = dest.join("r");
    for (rel, bytes) in files_under(run, &[".lock"]) {
        let p = copy.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    run_ok(analyze_bin().env("RAYON_NUM_THREADS", threads.to_string()).arg(&copy).args(["--quiet", "--device", "cpu"]));
    ["checkpoints", "layer_metrics", "model_metrics"]
        .iter()
        .map(|t| (t.to_string(), std::fs::read(copy.join(format!("analysis/{t}.parquet"))).unwrap()))
        .collect()
}

fn check(name: &str, args: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let runs: Vec<PathBuf> = [(1, "a"), (1, "b"), (2, "c")].iter().map(|(t, d)| train(&tmp.path().join(d), *t, args)).collect();
    let want = files_under(&runs[0], &["train_log.parquet", "run.json", ".lock"]);
    assert!(want.keys().filter(|k| k.starts_with("checkpoints/")).count() >= 5);
    for (i, run) in runs.iter().enumerate().skip(1) {
        let got = files_under(run, &["train_log.parquet", "run.json", ".lock"]);
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        for (k, v) in &want {
            assert!(got[k] == *v, "{name}: {k} differs between run 0 and run {i} (threads 1, 1, 2)");
        }
    }
    let one = analyse_copy(&runs[0], &tmp.path().join("an1"), 1);
    let again = analyse_copy(&runs[1], &tmp.path().join("an1b"), 1);
    let two = analyse_copy(&runs[0], &tmp.path().join("an2"), 2);
    for ((t, a), ((_, b), (_, c))) in one.iter().zip(again.iter().zip(&two)) {
        assert!(a == b, "{name}: {t} differs between two analyses on 1 thread");
        assert!(a == c, "{name}: {t} differs between 1 and 2 threads");
    }
}

#[test]
fn an_mlp_trains_and_analyses_to_the_same_bytes() {
    check(
        "mlp",
        &["--model", "mlp", "--width", "24", "--depth", "3", "--dataset", "sinusoid-2d", "--n-train", "256", "--n-test", "128"]
            .iter()
            .chain(&[
                "--steps",
                "24",
                "--batch-size",
                "32",
                "--probe-size",
                "96",
                "--optimizer",
                "adam",
                "--lr",
                "0.01",
                "--init",
                "orthogonal",
            ])
            .copied()
            .collect::<Vec<_>>(),
    );
}

#[test]
fn a_cnn_trains_and_analyses_to_the_same_bytes() {
    check(
        "cnn",
        &["--model", "cnn", "--conv", "4,M,8", "--dense", "16", "--dataset", "digits", "--steps", "24", "--batch-size", "32"]
            .iter()
            .chain(&["--probe-size", "96", "--augment"])
            .copied()
            .collect::<Vec<_>>(),
    );
}
