//! `lintrace-analyze query DIR "SQL"`: polars SQL over a sweep's (or a runs
//! root's, or a run's) tables, registered under their table names:
//! `layer_metrics`, `model_metrics`, `runs` and `train_log`. Each is every
//! run's file of that name, stacked (older schema versions get null
//! columns); `runs` is the sweep's own `runs.parquet` when there is one, so
//! pending runs are in it too.

use anyhow::{bail, Context, Result};
use lintrace_core::layout as run;
use polars::prelude::*;
use polars::sql::SQLContext;
// Eager Parquet/CSV I/O from polars-io: polars' own `parquet` feature routes
// through the streaming engine and its cloud stack (object_store, reqwest),
// which only local files do not need and which doubled the build.
use polars_io::prelude::{CsvWriter, ParquetReader, ParquetWriter, SerReader, SerWriter};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub const TABLES: [&str; 5] = ["checkpoints", "layer_metrics", "model_metrics", "runs", "train_log"];

/// The table files under `root`, by table name.
pub fn find_tables(root: &Path) -> Result<BTreeMap<&'static str, Vec<PathBuf>>> {
    if !root.is_dir() {
        bail!("{}: not a folder (give a sweep folder, a runs root or a run folder)", root.display());
    }
    let run_dirs: Vec<PathBuf> = if run::is_run_dir(root) { vec![root.to_path_buf()] } else { run::run_dirs_under(root)? };
    let mut found: BTreeMap<&'static str, Vec<PathBuf>> = TABLES.iter().map(|t| (*t, Vec::new())).collect();
    let sweep_runs = root.join("runs.parquet");
    for dir in &run_dirs {
        for (table, path) in [
            ("checkpoints", dir.join(run::ANALYSIS).join("checkpoints.parquet")),
            ("layer_metrics", dir.join(run::ANALYSIS).join("layer_metrics.parquet")),
            ("model_metrics", dir.join(run::ANALYSIS).join("model_metrics.parquet")),
            ("runs", dir.join(run::ANALYSIS).join("runs.parquet")),
            ("train_log", dir.join(run::TRAIN_LOG)),
        ] {
            if table == "runs" && sweep_runs.is_file() {
                continue;
            }
            if path.is_file() {
                found.get_mut(table).expect("known table").push(path);
            }
        }
    }
    if sweep_runs.is_file() {
        found.get_mut("runs").expect("known table").push(sweep_runs);
    }
    if found.values().all(Vec::is_empty) {
        bail!("{}: no lintrace tables found (run lintrace-analyze on it first)", root.display());
    }
    Ok(found)
}

fn read_parquet(path: &Path) -> Result<DataFrame> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    ParquetReader::new(file).finish().map_err(|e| anyhow::anyhow!("{}: not a readable Parquet file ({e})", path.display()))
}

/// Stacks files of one table; columns missing from some files are null there.
fn load(files: &[PathBuf]) -> Result<DataFrame> {
    let frames = files.iter().map(|p| read_parquet(p)).collect::<Result<Vec<_>>>()?;
    Ok(polars::functions::concat_df_diagonal(&frames)?)
}

/// Distinct probe hashes among the metric and runs tables, with a run that uses each.
fn probe_hashes(frames: &BTreeMap<&'static str, DataFrame>) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, df) in frames {
        if *name == "train_log" {
            continue;
        }
        let (Ok(hash), Ok(run)) = (df.column("probe_hash"), df.column("run_id")) else { continue };
        for i in 0..df.height() {
            if let (Some(h), Some(r)) = (text(hash.get(i)?), text(run.get(i)?)) {
                out.entry(h).or_default().insert(r);
            }
        }
    }
    Ok(out)
}

fn text(v: AnyValue<'_>) -> Option<String> {
    match v {
        AnyValue::String(s) => Some(s.to_string()),
        AnyValue::StringOwned(s) => Some(s.to_string()),
        _ => None,
    }
}

/// Every reader (queries, figures, reports) refuses to put rows computed on
/// different probe batches side by side unless asked: they do not compare
/// sample for sample. `hashes`: probe hash → runs that used it.
pub fn refuse_mixed_probes(root: &Path, hashes: &BTreeMap<String, BTreeSet<String>>) -> Result<()> {
    if hashes.len() <= 1 {
        return Ok(());
    }
    let list: Vec<String> = hashes
        .iter()
        .map(|(h, runs)| format!("{} ({} runs, e.g. {})", &h[..h.len().min(12)], runs.len(), runs.iter().next().map_or("", |s| s)))
        .collect();
    bail!(
        "{}: tables come from {} different probe batches ({}); their rows do not compare sample for sample. Use one probe's runs, or pass --allow-mixed-probes",
        root.display(),
        hashes.len(),
        list.join(", ")
    )
}

/// Registers the tables under `root` and runs `sql`.
pub fn run(root: &Path, sql: &str, allow_mixed_probes: bool) -> Result<DataFrame> {
    let files = find_tables(root)?;
    let mut frames = BTreeMap::new();
    for (name, paths) in &files {
        if !paths.is_empty() {
            frames.insert(*name, load(paths)?);
        }
    }
    let hashes = probe_hashes(&frames)?;
    if !allow_mixed_probes {
        refuse_mixed_probes(root, &hashes)?;
    }
    let lower = sql.to_lowercase();
    for t in TABLES {
        if !frames.contains_key(t) && lower.contains(t) {
            bail!("{}: the query uses {t}, but no {t} tables were found there (run lintrace-analyze first?)", root.display());
        }
    }
    let mut ctx = SQLContext::new();
    for (name, df) in frames {
        ctx.register(name, df.lazy());
    }
    let lf = ctx.execute(sql).map_err(|e| anyhow::anyhow!("SQL: {e}"))?;
    lf.collect().map_err(|e| anyhow::anyhow!("SQL: {e}"))
}

/// Writes a result as CSV or Parquet, by the file's extension, atomically.
pub fn write(df: &mut DataFrame, path: &Path) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let mut buf = Vec::new();
    match ext.as_str() {
        "csv" => {
            CsvWriter::new(&mut buf).finish(df)?;
        }
        "parquet" => {
            ParquetWriter::new(&mut buf).finish(df)?;
        }
        _ => bail!("{}: --out must end in .csv or .parquet", path.display()),
    }
    lintrace_core::atomic::write_atomic(path, &buf)
}
