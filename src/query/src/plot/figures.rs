//! The figures a study asks for, built from the tables under a folder
//! (read once into [`Tables`]).

use super::data::{resolve_analyzer, run_groups, sort_labels, LayerPoint, ModelPoint, Tables};
use super::heatmap::{Grid, Heatmaps};
use super::lines::{Lines, Series};
use anyhow::{bail, Result};
use std::collections::{BTreeMap, BTreeSet};

/// The depth × time heatmap of one run (`run` may be omitted when the
/// folder holds one run).
pub fn heatmap(tables: &Tables, run: Option<&str>, metric: &str, analyzer: Option<&str>) -> Result<Heatmaps> {
    let points = &tables.layer;
    let analyzer = resolve_analyzer(metric, analyzer, points.iter().map(|p| (p.analyzer.as_str(), p.metric.as_str())))?;
    let runs: BTreeSet<&str> = points.iter().filter(|p| p.metric == metric && p.analyzer == analyzer).map(|p| p.run_id.as_str()).collect();
    let run = match run {
        Some(r) if runs.contains(r) => r.to_string(),
        Some(r) => bail!("run '{r}' has no '{metric}' rows (runs with some: {})", runs.iter().copied().collect::<Vec<_>>().join(", ")),
        None if runs.len() == 1 => runs.iter().next().expect("one").to_string(),
        None => bail!("{} runs have '{metric}' rows; pick one with --run (e.g. {})", runs.len(), runs.iter().next().unwrap_or(&"")),
    };
    let sel: Vec<&LayerPoint> = points.iter().filter(|p| p.run_id == run && p.metric == metric && p.analyzer == analyzer).collect();
    Ok(Heatmaps {
        title: format!("{metric} over depth and training: {run}"),
        metric: format!("{analyzer}: {metric}"),
        panels: vec![Grid::from_points(run.clone(), &sel)],
    })
}

/// Groups run ids: by the value of config key `by` (label `by = value`,
/// ordered numerically when numbers), or one group per run.
fn groups(tables: &Tables, runs: &BTreeSet<String>, by: Option<&str>) -> Result<Vec<(String, BTreeSet<String>)>> {
    let Some(by) = by else {
        return Ok(runs.iter().map(|r| (r.clone(), BTreeSet::from([r.clone()]))).collect());
    };
    let values = run_groups(tables, by)?;
    let mut by_value: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in runs {
        if let Some(v) = values.get(r) {
            by_value.entry(v.clone()).or_default().insert(r.clone());
        }
    }
    let mut labels: Vec<String> = by_value.keys().cloned().collect();
    sort_labels(&mut labels);
    let key = by.trim_start_matches("config.");
    Ok(labels
        .into_iter()
        .map(|v| {
            let members = by_value.remove(&v).unwrap_or_default();
            let n = members.len();
            (format!("{key} = {v}{}", if n > 1 { format!(" (mean of {n} runs)") } else { String::new() }), members)
        })
        .collect())
}

/// A facet grid of heatmaps: one panel per run, or per value of `by`.
pub fn facet(tables: &Tables, metric: &str, analyzer: Option<&str>, by: Option<&str>) -> Result<Heatmaps> {
    let points = &tables.layer;
    let analyzer = resolve_analyzer(metric, analyzer, points.iter().map(|p| (p.analyzer.as_str(), p.metric.as_str())))?;
    let sel: Vec<&LayerPoint> = points.iter().filter(|p| p.metric == metric && p.analyzer == analyzer).collect();
    let runs: BTreeSet<String> = sel.iter().map(|p| p.run_id.clone()).collect();
    let mut panels = Vec::new();
    for (label, members) in groups(tables, &runs, by)? {
        let pts: Vec<&LayerPoint> = sel.iter().copied().filter(|p| members.contains(&p.run_id)).collect();
        panels.push(Grid::from_points(label, &pts));
    }
    if panels.is_empty() {
        bail!("no runs to draw (does every run have a '{}' value?)", by.unwrap_or("run_id"));
    }
    let across = by.map_or("runs".to_string(), |b| b.trim_start_matches("config.").to_string());
    Ok(Heatmaps { title: format!("{metric} over depth and training, across {across}"), metric: format!("{analyzer}: {metric}"), panels })
}

/// A model metric over log steps: a line per run (or per value of `by`) and
/// per surrogate, unless `surrogate` picks one.
pub fn lines(tables: &Tables, metric: &str, analyzer: Option<&str>, surrogate: Option<&str>, by: Option<&str>) -> Result<Lines> {
    let points = &tables.model;
    let analyzer = resolve_analyzer(metric, analyzer, points.iter().map(|p| (p.analyzer.as_str(), p.metric.as_str())))?;
    let sel: Vec<&ModelPoint> = points
        .iter()
        .filter(|p| p.metric == metric && p.analyzer == analyzer && surrogate.is_none_or(|s| p.surrogate.as_deref() == Some(s)))
        .collect();
    if sel.is_empty() {
        bail!("no '{metric}' rows against surrogate '{}'", surrogate.unwrap_or("any"));
    }
    let runs: BTreeSet<String> = sel.iter().map(|p| p.run_id.clone()).collect();
    let surrogates: BTreeSet<Option<String>> = sel.iter().map(|p| p.surrogate.clone()).collect();
    let mut series = Vec::new();
    for (label, members) in groups(tables, &runs, by)? {
        for s in &surrogates {
            let pts: Vec<&ModelPoint> = sel.iter().copied().filter(|p| members.contains(&p.run_id) && &p.surrogate == s).collect();
            if pts.is_empty() {
                continue;
            }
            let label = match s {
                Some(s) if surrogates.len() > 1 => format!("{label} · vs {s}"),
                _ => label.clone(),
            };
            series.push(Series::mean_of(label, &pts));
        }
    }
    let against = match (surrogates.len(), surrogates.iter().next()) {
        (1, Some(Some(s))) => format!(" against {s}"),
        _ => String::new(),
    };
    Ok(Lines { title: format!("{metric}{against} over training"), y_label: format!("{analyzer}: {metric}"), series })
}
