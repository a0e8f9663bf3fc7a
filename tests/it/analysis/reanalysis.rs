//! Re-analysis: an analyzer's version is part of every row and of the record
//! of what was computed, so bumping it (or adding an analyzer) recomputes
//! exactly its rows and leaves every other row, bit for bit, as it was.

use crate::common::*;
use analyzers::{Accumulator, Analyzer, ModelInfo, Needs};
use lintrace::analysis::{self, AnalyzeOptions};
use lintrace::tables::{Table, Value};

/// `inner` under a newer version number, as after a change to its code.
struct Bumped(Box<dyn Analyzer>);

impl Analyzer for Bumped {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn version(&self) -> u32 {
        self.0.version() + 1
    }
    fn description(&self) -> &'static str {
        self.0.description()
    }
    fn metrics(&self) -> &'static [&'static str] {
        self.0.metrics()
    }
    fn needs(&self) -> Needs {
        self.0.needs()
    }
    fn start(&self, model: &ModelInfo) -> Box<dyn Accumulator> {
        self.0.start(model)
    }
}

/// A newly added analyzer (here: an existing one under a new name).
struct Added(Box<dyn Analyzer>);

impl Analyzer for Added {
    fn name(&self) -> &'static str {
        "regime_copy"
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "test-only copy of activation_regime"
    }
    fn metrics(&self) -> &'static [&'static str] {
        self.0.metrics()
    }
    fn needs(&self) -> Needs {
        self.0.needs()
    }
    fn start(&self, model: &ModelInfo) -> Box<dyn Accumulator> {
        self.0.start(model)
    }
}

fn by(name: &str) -> Box<dyn Analyzer> {
    analyzers::by_name(name).expect("registered")
}

/// Rows of `table` written by `analyzer`, with every float as its bits.
fn rows(t: &Table, analyzer: &str) -> Vec<Vec<String>> {
    let ai = t.column_index("analyzer").unwrap();
    t.rows
        .iter()
        .filter(|r| r[ai].as_str() == Some(analyzer))
        .map(|r| r.iter().map(|v| if let Value::F64(x) = v { format!("{:x}", x.to_bits()) } else { format!("{v:?}") }).collect())
        .collect()
}

fn version_of(t: &Table, analyzer: &str) -> Vec<i64> {
    let (ai, vi) = (t.column_index("analyzer").unwrap(), t.column_index("analyzer_version").unwrap());
    let mut v: Vec<i64> = t.rows.iter().filter(|r| r[ai].as_str() == Some(analyzer)).filter_map(|r| r[vi].as_i64()).collect();
    v.dedup();
    v
}

#[test]
fn a_version_bump_recomputes_only_that_analyzers_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_mlp_run(tmp.path(), "r", &[]);
    let (targets, failures) = analysis::discover(std::slice::from_ref(&run), None).unwrap();
    assert!(failures.is_empty());
    let n_ckpt = targets[0].checkpoints.len();
    let opts = AnalyzeOptions { device: "cpu".into(), quiet: true, ..Default::default() };
    let layer_path = run.join("analysis/layer_metrics.parquet");
    let model_path = run.join("analysis/model_metrics.parquet");

    let first = analysis::analyze_with(&targets, vec![by("performance"), by("activation_regime"), by("unit_linear_fit")], &opts).unwrap();
    assert_eq!(first.analysed, n_ckpt);
    let layer0 = Table::read(&layer_path, "layer_metrics").unwrap();
    let model_bytes0 = std::fs::read(&model_path).unwrap();
    let v0 = version_of(&layer0, "activation_regime");
    assert_eq!(v0.len(), 1);

    // activation_regime v+1: only its rows are computed; the other two are skipped.
    let bumped =
        analysis::analyze_with(&targets, vec![by("performance"), Box::new(Bumped(by("activation_regime"))), by("unit_linear_fit")], &opts)
            .unwrap();
    assert_eq!(bumped.analysed, n_ckpt, "every checkpoint needs the new version");
    assert_eq!(bumped.skipped, 2 * n_ckpt, "performance and unit_linear_fit are not recomputed");
    let layer1 = Table::read(&layer_path, "layer_metrics").unwrap();
    assert_eq!(version_of(&layer1, "activation_regime"), vec![v0[0] + 1], "old-version rows are replaced");
    assert_eq!(rows(&layer1, "activation_regime").len(), rows(&layer0, "activation_regime").len());
    assert_eq!(rows(&layer1, "unit_linear_fit"), rows(&layer0, "unit_linear_fit"), "other analyzers' rows are bit-identical");
    assert_eq!(std::fs::read(&model_path).unwrap(), model_bytes0, "a table the bumped analyzer does not write is byte-identical");

    // A newly added analyzer: only its rows appear.
    let added = analysis::analyze_with(
        &targets,
        vec![by("performance"), Box::new(Bumped(by("activation_regime"))), by("unit_linear_fit"), Box::new(Added(by("activation_regime")))],
        &opts,
    )
    .unwrap();
    assert_eq!(added.skipped, 3 * n_ckpt);
    let layer2 = Table::read(&layer_path, "layer_metrics").unwrap();
    assert!(!rows(&layer2, "regime_copy").is_empty());
    for a in ["activation_regime", "unit_linear_fit"] {
        assert_eq!(rows(&layer2, a), rows(&layer1, a), "{a} rows changed when another analyzer was added");
    }
    assert_eq!(std::fs::read(&model_path).unwrap(), model_bytes0);

    // Nothing left to do: a re-run computes nothing and rewrites nothing.
    let layer_bytes2 = std::fs::read(&layer_path).unwrap();
    let again = analysis::analyze_with(
        &targets,
        vec![by("performance"), Box::new(Bumped(by("activation_regime"))), by("unit_linear_fit"), Box::new(Added(by("activation_regime")))],
        &opts,
    )
    .unwrap();
    assert_eq!(again.analysed, 0);
    assert_eq!(std::fs::read(&layer_path).unwrap(), layer_bytes2);

    // --force recomputes the selected analyzer and keeps the others' rows.
    let forced =
        analysis::analyze_with(&targets, vec![Box::new(Bumped(by("activation_regime")))], &AnalyzeOptions { force: true, ..opts.clone() })
            .unwrap();
    assert_eq!(forced.analysed, n_ckpt);
    let layer3 = Table::read(&layer_path, "layer_metrics").unwrap();
    assert_eq!(rows(&layer3, "unit_linear_fit"), rows(&layer0, "unit_linear_fit"));
    assert_eq!(rows(&layer3, "regime_copy"), rows(&layer2, "regime_copy"));
    assert_eq!(rows(&layer3, "activation_regime"), rows(&layer2, "activation_regime"), "recomputed values are deterministic");
}
