//! The `runs` table: a row per run with its status, flattened config and
//! final model metrics. One run writes its own row to
//! `RUN_DIR/analysis/runs.parquet`; a sweep writes every run's row (trained
//! or not) to `SWEEP_DIR/runs.parquet`, which is what sweep queries join on.

use crate::run::RunManifest;
use crate::sweep::{local, Sweep};
use crate::tables::{flatten::flatten, ColumnType, Table, Value};
use anyhow::Result;
use std::collections::BTreeMap;

/// What one row says, before it becomes Parquet.
#[derive(Debug, Clone, Default)]
pub struct RunRow {
    pub run_id: String,
    pub sweep_id: Option<String>,
    pub status: String,
    pub lintrace_version: Option<String>,
    pub dataset_fingerprint: Option<String>,
    pub probe_hash: Option<String>,
    pub n_parameters: Option<i64>,
    pub n_taps: Option<i32>,
    pub total_steps: Option<i64>,
    pub steps_done: Option<i64>,
    pub wall_seconds: Option<f64>,
    pub error: Option<String>,
    pub config: serde_json::Value,
    /// The last analysed step and its model metrics, named `final.ANALYZER.METRIC[.SURROGATE]`.
    pub final_step: Option<i64>,
    pub finals: Vec<(String, Value)>,
}

impl RunRow {
    pub fn from_manifest(m: &RunManifest, sweep_id: Option<String>) -> RunRow {
        RunRow {
            run_id: m.run_id.clone(),
            sweep_id,
            status: m.status.as_str().into(),
            lintrace_version: Some(m.lintrace_version.clone()),
            dataset_fingerprint: Some(m.dataset.fingerprint.clone()),
            probe_hash: Some(m.probe_hash.clone()),
            n_parameters: Some(m.n_parameters as i64),
            n_taps: Some(m.n_taps as i32),
            total_steps: Some(m.total_steps as i64),
            steps_done: Some(m.steps_done as i64),
            wall_seconds: Some(m.wall_seconds),
            error: m.error.clone(),
            config: serde_json::to_value(&m.config).unwrap_or(serde_json::Value::Null),
            final_step: None,
            finals: Vec::new(),
        }
    }

    /// Fills the final.* columns from a run's model_metrics rows.
    pub fn with_finals(mut self, model_metrics: &Table) -> RunRow {
        let col = |n: &str| model_metrics.column_index(n).expect("model_metrics column");
        let (si, ai, ui, mi, vi) = (col("step"), col("analyzer"), col("surrogate"), col("metric"), col("value"));
        let Some(last) = model_metrics.rows.iter().filter_map(|r| r[si].as_i64()).max() else { return self };
        self.final_step = Some(last);
        self.finals = model_metrics
            .rows
            .iter()
            .filter(|r| r[si].as_i64() == Some(last))
            .map(|r| {
                let mut name = format!("final.{}.{}", r[ai].as_str().unwrap_or("?"), r[mi].as_str().unwrap_or("?"));
                if let Some(s) = r[ui].as_str() {
                    name.push('.');
                    name.push_str(s);
                }
                (name, r[vi].clone())
            })
            .collect();
        self.finals.sort_by(|a, b| a.0.cmp(&b.0));
        self
    }
}

/// Builds the table. Extra columns are the union over rows; a column whose
/// non-null values disagree in type (which a fixed config schema should
/// never produce) is written as strings rather than refused.
pub fn table(rows: &[RunRow]) -> Table {
    let mut t = Table::new("runs");
    let flat: Vec<Vec<(String, ColumnType, Value)>> = rows
        .iter()
        .map(|r| {
            let mut cols = flatten("config.", &r.config);
            cols.extend(r.finals.iter().map(|(n, v)| (n.clone(), ColumnType::Float64, v.clone())));
            cols
        })
        .collect();
    let mut types: BTreeMap<String, Option<ColumnType>> = BTreeMap::new();
    for (name, ty, v) in flat.iter().flatten() {
        let e = types.entry(name.clone()).or_insert(None);
        if *v != Value::Null {
            *e = match *e {
                None => Some(*ty),
                Some(old) if old == *ty => Some(old),
                Some(_) => Some(ColumnType::String),
            };
        }
    }
    // config.* first, then final.*, each sorted.
    t.extra = types.iter().map(|(n, ty)| (n.clone(), ty.unwrap_or(ColumnType::String))).collect();
    t.extra.sort_by_key(|(n, _)| (!n.starts_with("config."), n.clone()));
    let opt_str = |s: &Option<String>| s.clone().map_or(Value::Null, Value::Str);
    for (r, cols) in rows.iter().zip(&flat) {
        let mut row = vec![
            Value::Str(r.run_id.clone()),
            opt_str(&r.sweep_id),
            Value::Str(r.status.clone()),
            opt_str(&r.lintrace_version),
            opt_str(&r.dataset_fingerprint),
            opt_str(&r.probe_hash),
            r.n_parameters.map_or(Value::Null, Value::I64),
            r.n_taps.map_or(Value::Null, Value::I32),
            r.total_steps.map_or(Value::Null, Value::I64),
            r.steps_done.map_or(Value::Null, Value::I64),
            r.final_step.map_or(Value::Null, Value::I64),
            Value::opt_f64(r.wall_seconds),
            opt_str(&r.error),
        ];
        let by_name: BTreeMap<&str, &Value> = cols.iter().map(|(n, _, v)| (n.as_str(), v)).collect();
        for (name, ty) in &t.extra {
            let v = by_name.get(name.as_str()).map_or(Value::Null, |v| (*v).clone());
            row.push(match (ty, v) {
                (ColumnType::String, Value::Null) => Value::Null,
                (ColumnType::String, Value::Str(s)) => Value::Str(s),
                (ColumnType::String, other) => Value::Str(other.to_text()),
                (_, v) => v,
            });
        }
        t.push(row);
    }
    t
}

/// Every run of a sweep: trained ones from their manifest and tables,
/// pending ones from sweep.json alone.
pub fn sweep_rows(sweep: &Sweep) -> Result<Vec<RunRow>> {
    let mut rows = Vec::new();
    for r in &sweep.runs {
        let dir = sweep.run_dir(r);
        let row = match RunManifest::read(&dir) {
            Ok(m) => {
                let row = RunRow::from_manifest(&m, Some(sweep.name.clone()));
                let model = dir.join(crate::run::ANALYSIS).join("model_metrics.parquet");
                match model.is_file().then(|| Table::read(&model, "model_metrics")) {
                    Some(Ok(t)) => row.with_finals(&t),
                    Some(Err(e)) => RunRow { error: Some(format!("{e:#}")), ..row },
                    None => row,
                }
            }
            Err(_) => RunRow {
                run_id: r.run_id.clone(),
                sweep_id: Some(sweep.name.clone()),
                status: local::run_status(sweep, r).into(),
                config: serde_json::to_value(&r.config)?,
                ..Default::default()
            },
        };
        rows.push(row);
    }
    Ok(rows)
}

/// Writes `SWEEP_DIR/runs.parquet`.
pub fn write_sweep_table(sweep: &Sweep) -> Result<std::path::PathBuf> {
    let path = sweep.dir.join("runs.parquet");
    table(&sweep_rows(sweep)?).write(&path)?;
    Ok(path)
}
