//! What the figures draw, read from the tables under a sweep folder, runs
//! root or run folder (the same files `query` registers).

use crate::query::find_tables;
use anyhow::{bail, Result};
use lintrace_core::tables::Table;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct LayerPoint {
    pub run_id: String,
    pub step: i64,
    pub tap: usize,
    pub layer_name: String,
    pub analyzer: String,
    pub metric: String,
    pub value: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct ModelPoint {
    pub run_id: String,
    pub step: i64,
    pub analyzer: String,
    pub surrogate: Option<String>,
    pub metric: String,
    pub value: Option<f64>,
}

/// Every table under a folder, read once: the metric rows as points and
/// the runs tables as they are (figures group runs by their config).
pub struct Tables {
    pub root: PathBuf,
    pub layer: Vec<LayerPoint>,
    pub model: Vec<ModelPoint>,
    pub runs: Vec<Table>,
}

impl Tables {
    /// Reads the tables under `root`; rows from different probe batches
    /// are refused unless `allow_mixed_probes`.
    pub fn load(root: &Path, allow_mixed_probes: bool) -> Result<Tables> {
        let files = find_tables(root)?;
        let read = |name: &str| -> Result<Vec<Table>> { files.get(name).into_iter().flatten().map(|p| Table::read(p, name)).collect() };
        let (layer, model, runs) = (read("layer_metrics")?, read("model_metrics")?, read("runs")?);
        if !allow_mixed_probes {
            let mut hashes: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
            for t in layer.iter().chain(&model).chain(&runs) {
                let (Some(hi), Some(ri)) = (t.column_index("probe_hash"), t.column_index("run_id")) else { continue };
                for r in &t.rows {
                    if let Some(h) = r[hi].as_str() {
                        hashes.entry(h.to_string()).or_default().insert(r[ri].to_text());
                    }
                }
            }
            crate::query::refuse_mixed_probes(root, &hashes)?;
        }
        Ok(Tables { root: root.to_path_buf(), layer: layer_points(&layer), model: model_points(&model), runs })
    }
}

fn layer_points(tables: &[Table]) -> Vec<LayerPoint> {
    let mut out = Vec::new();
    for t in tables {
        let c = |n: &str| t.column_index(n).expect("layer_metrics column");
        let (ri, si, ti, li, ai, mi, vi) = (c("run_id"), c("step"), c("tap"), c("layer_name"), c("analyzer"), c("metric"), c("value"));
        for r in &t.rows {
            out.push(LayerPoint {
                run_id: r[ri].to_text(),
                step: r[si].as_i64().unwrap_or(0),
                tap: r[ti].as_i64().unwrap_or(0).max(0) as usize,
                layer_name: r[li].to_text(),
                analyzer: r[ai].to_text(),
                metric: r[mi].to_text(),
                value: r[vi].as_f64(),
            });
        }
    }
    out
}

fn model_points(tables: &[Table]) -> Vec<ModelPoint> {
    let mut out = Vec::new();
    for t in tables {
        let c = |n: &str| t.column_index(n).expect("model_metrics column");
        let (ri, si, ai, ui, mi, vi) = (c("run_id"), c("step"), c("analyzer"), c("surrogate"), c("metric"), c("value"));
        for r in &t.rows {
            out.push(ModelPoint {
                run_id: r[ri].to_text(),
                step: r[si].as_i64().unwrap_or(0),
                analyzer: r[ai].to_text(),
                surrogate: r[ui].as_str().map(str::to_string),
                metric: r[mi].to_text(),
                value: r[vi].as_f64(),
            });
        }
    }
    out
}

/// Each run's value of config key `by` (`lr`, `dataset`, … or a full
/// column name such as `config.lr`), as text; runs without it are left out.
pub fn run_groups(tables: &Tables, by: &str) -> Result<BTreeMap<String, String>> {
    let col = if by.starts_with("config.") { by.to_string() } else { format!("config.{by}") };
    let mut out = BTreeMap::new();
    let mut seen_column = false;
    for t in &tables.runs {
        let Some(ci) = t.column_index(&col) else { continue };
        seen_column = true;
        let ri = t.column_index("run_id").expect("run_id column");
        for r in &t.rows {
            out.insert(r[ri].to_text(), r[ci].to_text());
        }
    }
    if !seen_column {
        bail!("{}: no runs table has a column '{col}' (run lintrace-analyze first; group by a config key)", tables.root.display());
    }
    Ok(out)
}

/// Picks the analyzer of `metric` when the caller did not: it must be unique.
pub fn resolve_analyzer<'a>(metric: &str, analyzer: Option<&str>, available: impl Iterator<Item = (&'a str, &'a str)>) -> Result<String> {
    let analyzers: BTreeSet<&str> = available.filter(|(_, m)| *m == metric).map(|(a, _)| a).collect();
    match analyzer {
        Some(a) if analyzers.contains(a) => Ok(a.to_string()),
        Some(a) => bail!("analyzer '{a}' wrote no '{metric}' rows (found it from: {})", list(&analyzers)),
        None if analyzers.len() == 1 => Ok(analyzers.iter().next().expect("one").to_string()),
        None if analyzers.is_empty() => bail!("no rows of metric '{metric}' (is the metric name right, and was the run analysed?)"),
        None => bail!("metric '{metric}' comes from several analyzers ({}); pick one with --analyzer", list(&analyzers)),
    }
}

fn list(s: &BTreeSet<&str>) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s.iter().copied().collect::<Vec<_>>().join(", ")
    }
}

/// Orders group labels numerically when they are numbers.
pub fn sort_labels(labels: &mut [String]) {
    labels.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.cmp(b),
    });
}
