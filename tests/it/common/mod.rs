//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod svg;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    repo().join("fixtures").join(rel)
}

/// Tests keep their decoded-data and surrogate caches out of the user's.
fn with_test_cache(mut c: Command) -> Command {
    c.env("LINTRACE_CACHE", std::env::temp_dir().join("lintrace-test-cache"));
    c
}

pub fn train_bin() -> Command {
    with_test_cache(Command::new(env!("CARGO_BIN_EXE_lintrace-train")))
}

pub fn analyze_bin() -> Command {
    with_test_cache(Command::new(env!("CARGO_BIN_EXE_lintrace-analyze")))
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("binary runs");
    assert!(
        out.status.success(),
        "command failed: {:?}\nstdout: {}\nstderr: {}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command that trains a tiny MLP on the 2-D sinusoid task into `root`.
pub fn tiny_mlp_cmd(root: &Path, name: &str, extra: &[&str]) -> Command {
    let mut cmd = train_bin();
    cmd.args(["--model", "mlp", "--width", "16", "--depth", "3", "--dataset", "sinusoid-2d", "--n-train", "256", "--n-test", "128"])
        .args(["--steps", "20", "--batch-size", "32", "--lr", "0.1", "--probe-size", "64", "--quiet", "--name", name])
        .arg("--out")
        .arg(root)
        .args(extra);
    cmd
}

/// Trains a tiny MLP on the 2-D sinusoid task into `root`, returns its run dir.
pub fn tiny_mlp_run(root: &Path, name: &str, extra: &[&str]) -> PathBuf {
    run_ok(&mut tiny_mlp_cmd(root, name, extra));
    root.join(name)
}

/// Every file under `dir` (relative path → bytes), skipping `skip`ped names.
pub fn files_under(dir: &Path, skip: &[&str]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(|e| e.unwrap()) {
            let p = e.path();
            if skip.iter().any(|s| e.file_name() == *s) {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Temporary files left under `dir` by interrupted atomic writes.
pub fn temp_files_under(dir: &Path) -> Vec<String> {
    files_under(dir, &[]).into_keys().filter(|k| k.rsplit('/').next().is_some_and(|n| n.starts_with(".lintrace-tmp-"))).collect()
}

pub fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want} (tol {tol})");
}

/// Rows of a metrics table written by the given analyzers.
pub fn rows_of(t: &lintrace::tables::Table, analyzers: &[&str]) -> usize {
    let ai = t.column_index("analyzer").expect("analyzer column");
    t.rows.iter().filter(|r| r[ai].as_str().is_some_and(|a| analyzers.contains(&a))).count()
}

/// Largest absolute difference of two tensors of the same shape.
pub fn max_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f32> = a.flatten_all().unwrap().to_dtype(candle_core::DType::F32).unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_dtype(candle_core::DType::F32).unwrap().to_vec1().unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// One plain SGD step (learning rate `lr`) on the mean cross-entropy of
/// (`x`, `y`) in training mode, from `initial` (a state dict holding every
/// tensor of `spec`), as the PyTorch fixtures take it: the train-mode
/// logits, and every tensor after the step (BatchNorm's running statistics
/// as the forward pass updated them). Every trainable tensor must get a
/// gradient.
pub fn one_sgd_step(
    spec: &lintrace::spec::ModelSpec,
    initial: &std::collections::HashMap<String, candle_core::Tensor>,
    x: &candle_core::Tensor,
    y: &candle_core::Tensor,
    lr: f64,
) -> (candle_core::Tensor, std::collections::BTreeMap<String, candle_core::Tensor>) {
    use candle_core::Var;
    let mut vars = std::collections::BTreeMap::new();
    let mut tensors = std::collections::BTreeMap::new();
    for (name, _) in spec.tensor_shapes() {
        let v = Var::from_tensor(&initial[&name]).unwrap();
        tensors.insert(name.clone(), v.as_tensor().clone());
        vars.insert(name, v);
    }
    let model = lintrace::model::Model::new(spec, lintrace::model::Weights::new(tensors)).unwrap();
    model.set_training(true);
    let logits = model.logits(x).unwrap();
    let y = y.to_dtype(candle_core::DType::U32).unwrap();
    let grads = candle_nn::loss::cross_entropy(&logits, &y).unwrap().backward().unwrap();
    for (name, v) in &vars {
        match grads.get(v.as_tensor()) {
            Some(grad) => v.set(&(v.as_tensor() - (grad * lr).unwrap()).unwrap()).unwrap(),
            None => assert!(lintrace::spec::is_buffer(name), "{name} got no gradient"),
        }
    }
    (logits, vars.into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect())
}

/// Trains `args` (a run named `r`) into ROOT/a, and into ROOT/b killed after
/// step 5 and then resumed; asserts that both runs' checkpoints are the
/// same bytes and returns the uninterrupted run's folder.
pub fn train_interrupted_and_resumed(root: &Path, args: &[&str]) -> PathBuf {
    let train = |dir: &Path, extra: &[&str]| {
        let mut c = train_bin();
        c.args(args).args(["--quiet", "--name", "r", "--out"]).arg(dir).args(extra);
        c
    };
    run_ok(&mut train(&root.join("a"), &[]));
    let out = train(&root.join("b"), &[]).env("LINTRACE_ABORT_AFTER_STEP", "5").output().unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    run_ok(&mut train(&root.join("b"), &["--resume"]));
    let (a, b) = (root.join("a/r"), root.join("b/r"));
    assert_eq!(files_under(&a.join("checkpoints"), &[]), files_under(&b.join("checkpoints"), &[]));
    a
}

/// A fixture net written by a PyTorch script: `fixtures/DIR/` holds
/// `spec.json`, `initial.safetensors` (the state dict) and
/// `golden.safetensors` (its reference values).
pub struct FixtureNet(pub String);

impl FixtureNet {
    pub fn new(dir: &str) -> Self {
        FixtureNet(dir.to_string())
    }
    fn tensors(&self, file: &str) -> std::collections::HashMap<String, candle_core::Tensor> {
        candle_core::safetensors::load(fixture(&format!("{}/{file}", self.0)), &candle_core::Device::Cpu).unwrap()
    }
    pub fn golden(&self) -> std::collections::HashMap<String, candle_core::Tensor> {
        self.tensors("golden.safetensors")
    }
    pub fn initial(&self) -> std::collections::HashMap<String, candle_core::Tensor> {
        self.tensors("initial.safetensors")
    }
    pub fn spec(&self) -> lintrace::spec::ModelSpec {
        lintrace::spec::ModelSpec::from_json(&std::fs::read_to_string(fixture(&format!("{}/spec.json", self.0))).unwrap()).unwrap()
    }
    /// Asserts that a pass resumed at every tap from the recorded values
    /// gives the full pass's logits on the golden `x`; returns the taps.
    pub fn assert_resumes_at_every_tap(&self) -> (lintrace::model::Model, Vec<lintrace::model::TapValues>) {
        let (m, x) = (self.model(), self.golden()["x"].clone());
        let (logits, taps) = m.forward_with_taps(&x).unwrap();
        for (k, t) in taps.iter().enumerate() {
            let resumed = m.forward_from(k, t, &mut lintrace::model::Taps::off()).unwrap();
            let d = max_diff(&resumed, &logits);
            assert!(d < 1e-5, "{}: resumed at tap {k}: off by {d}", self.0);
        }
        (m, taps)
    }

    /// The state dict loaded as a checkpoint from elsewhere would be.
    pub fn model(&self) -> lintrace::model::Model {
        let meta = lintrace::checkpoint::CheckpointMeta { spec: self.spec(), run_id: self.0.clone(), step: 0, epoch: 0.0, samples_seen: 0 };
        let path = fixture(&format!("{}/initial.safetensors", self.0));
        lintrace::checkpoint::load_foreign(&path, Some(&meta), &[]).unwrap().model(&candle_core::Device::Cpu).unwrap()
    }
}
