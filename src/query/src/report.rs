//! `lintrace-analyze report DIR`: one self-contained HTML page (inline SVG
//! figures, no scripts, no external files) with the runs table, a facet grid
//! of heatmaps for every layer metric and a line plot for every model metric.

use crate::plot::data::Tables;
use crate::plot::{self, figures};
use anyhow::{Context, Result};
use lintrace_core::layout::SweepHeader;
use lintrace_core::tables::Value;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

/// Panels per facet grid before runs are grouped by the sweep's first axis.
const MAX_PANELS: usize = 12;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn cell(v: &Value) -> String {
    match v {
        Value::Str(s) => esc(s),
        Value::I32(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F64(x) => plot::short(*x),
        Value::Bool(b) => b.to_string(),
        Value::Null => "–".into(),
    }
}

/// Bookkeeping counts (n_rows, n_units, …) are in the tables, not the figures.
fn is_count(metric: &str) -> bool {
    metric.starts_with("n_")
}

/// The runs table: identity, progress, the config keys that vary, final metrics.
fn runs_html(tables: &Tables, axes: &[String]) -> Result<String> {
    let mut rows: Vec<(Vec<String>, Vec<Value>)> = Vec::new();
    for t in &tables.runs {
        let names: Vec<String> = t.schema.columns.iter().map(|c| c.name.clone()).chain(t.extra.iter().map(|(n, _)| n.clone())).collect();
        for r in &t.rows {
            rows.push((names.clone(), r.clone()));
        }
    }
    if rows.is_empty() {
        return Ok("<p>No runs table yet: run <code>lintrace-analyze</code> on this folder.</p>".into());
    }
    let get = |names: &[String], r: &[Value], n: &str| names.iter().position(|x| x == n).map(|i| r[i].clone()).unwrap_or(Value::Null);
    // Config columns: the sweep's axes, else those that differ between runs.
    let config_cols: Vec<String> = if !axes.is_empty() {
        axes.iter().map(|a| format!("config.{a}")).collect()
    } else {
        let all: BTreeSet<String> = rows.iter().flat_map(|(n, _)| n.iter().filter(|c| c.starts_with("config.")).cloned()).collect();
        all.into_iter().filter(|c| rows.iter().map(|(n, r)| cell(&get(n, r, c))).collect::<BTreeSet<_>>().len() > 1).collect()
    };
    let finals: BTreeSet<String> = rows.iter().flat_map(|(n, _)| n.iter().filter(|c| c.starts_with("final.")).cloned()).collect();
    let mut cols: Vec<String> = ["run_id", "status", "steps_done", "total_steps", "final_step"].iter().map(|s| s.to_string()).collect();
    cols.extend(config_cols);
    cols.extend(finals.into_iter().filter(|c| !is_count(c.rsplit('.').next().unwrap_or(""))));
    let mut h = String::from("<div class=\"scroll\"><table><thead><tr>");
    for c in &cols {
        let _ = write!(h, "<th>{}</th>", esc(c.trim_start_matches("config.")));
    }
    h.push_str("</tr></thead><tbody>");
    for (names, r) in &rows {
        h.push_str("<tr>");
        for c in &cols {
            let _ = write!(h, "<td>{}</td>", cell(&get(names, r, c)));
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></div>");
    Ok(h)
}

/// Writes the report and returns how many figures it holds.
pub fn write(root: &Path, out: &Path, allow_mixed_probes: bool) -> Result<usize> {
    let sweep = lintrace_core::layout::is_sweep_dir(root).then(|| SweepHeader::load(root)).transpose()?;
    let axes: Vec<String> = sweep.iter().flat_map(|s| s.axes.iter().flat_map(|a| a.keys.clone())).collect();
    let title = sweep.as_ref().map_or_else(
        || root.canonicalize().ok().and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned())).unwrap_or_else(|| "runs".into()),
        |s| s.name.clone(),
    );
    let tables = Tables::load(root, allow_mixed_probes)?;
    let (layer, model) = (&tables.layer, &tables.model);
    let runs: BTreeSet<&str> = layer.iter().map(|p| p.run_id.as_str()).chain(model.iter().map(|p| p.run_id.as_str())).collect();
    let by = (runs.len() > MAX_PANELS).then(|| axes.first().cloned()).flatten();

    let mut body = String::new();
    let mut figures_written = 0;
    let _ = write!(body, "<h2>Runs</h2>{}", runs_html(&tables, &axes)?);

    let layer_metrics: BTreeSet<(String, String)> = layer.iter().map(|p| (p.analyzer.clone(), p.metric.clone())).collect();
    if !layer_metrics.is_empty() {
        let _ = write!(
            body,
            "<h2>Layer metrics over depth and training</h2><p>x: checkpoint step (log); y: tap, shallow at the bottom; colour: the metric{}.</p>",
            by.as_ref().map_or(String::new(), |b| format!(", averaged over the runs of each {b}"))
        );
    }
    for (analyzer, metric) in layer_metrics.iter().filter(|(_, m)| !is_count(m)) {
        let fig = figures::facet(&tables, metric, Some(analyzer), by.as_deref())?;
        let svg = plot::to_svg(&fig).with_context(|| format!("{analyzer}: {metric}"))?;
        let _ = write!(body, "<figure id=\"layer-{analyzer}-{metric}\"><figcaption>{analyzer}: {metric}</figcaption>{svg}</figure>");
        figures_written += 1;
    }
    let model_metrics: BTreeSet<(String, String)> = model.iter().map(|p| (p.analyzer.clone(), p.metric.clone())).collect();
    if !model_metrics.is_empty() {
        body.push_str("<h2>Model metrics over training</h2>");
    }
    for (analyzer, metric) in model_metrics.iter().filter(|(_, m)| !is_count(m)) {
        let fig = figures::lines(&tables, metric, Some(analyzer), None, by.as_deref())?;
        let svg = plot::to_svg(&fig).with_context(|| format!("{analyzer}: {metric}"))?;
        let _ = write!(body, "<figure id=\"model-{analyzer}-{metric}\"><figcaption>{analyzer}: {metric}</figcaption>{svg}</figure>");
        figures_written += 1;
    }
    let html = format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lintrace: {t}</title>
<style>
body {{ font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }}
th {{ background: #f2f2f2; }} td:first-child {{ text-align: left; }}
.scroll {{ overflow-x: auto; }}
figure {{ margin: 1.5em 0; }} figcaption {{ font-weight: bold; margin-bottom: .4em; }}
svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>lintrace: {t}</h1>
<p>{n} runs under <code>{dir}</code>; written by lintrace {v}. Every figure is drawn from the Parquet tables there, which <code>lintrace-analyze query</code> and polars read directly.</p>
{body}
</body></html>
"#,
        t = esc(&title),
        n = runs.len(),
        dir = esc(&root.display().to_string()),
        v = lintrace_core::VERSION,
    );
    lintrace_core::atomic::write_atomic(out, html.as_bytes())?;
    Ok(figures_written)
}
