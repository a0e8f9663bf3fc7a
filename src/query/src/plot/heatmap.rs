//! Depth × time heatmaps: x is the checkpoint step on a log axis, y the tap
//! from shallow (bottom) to deep (top), colour the metric. Several panels
//! (a facet grid) share one colour scale and one colour bar.

use super::data::LayerPoint;
use super::{drawing, log_step, short, step_label, step_ticks, viridis, Figure, Ticked, FONT};
use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;

/// One panel: the mean of the metric over the panel's runs, per (step, tap).
#[derive(Debug, Clone)]
pub struct Grid {
    pub title: String,
    pub steps: Vec<i64>,
    /// Tap labels, index = tap.
    pub taps: Vec<String>,
    pub cells: BTreeMap<(i64, usize), f64>,
}

impl Grid {
    pub fn from_points(title: impl Into<String>, points: &[&LayerPoint]) -> Grid {
        let mut sums: BTreeMap<(i64, usize), (f64, usize)> = BTreeMap::new();
        let mut names: BTreeMap<usize, String> = BTreeMap::new();
        let mut steps = std::collections::BTreeSet::new();
        for p in points {
            steps.insert(p.step);
            names.entry(p.tap).or_insert_with(|| p.layer_name.clone());
            if let Some(v) = p.value {
                let e = sums.entry((p.step, p.tap)).or_insert((0.0, 0));
                e.0 += v;
                e.1 += 1;
            }
        }
        let n_taps = names.keys().next_back().map_or(0, |&t| t + 1);
        let taps = (0..n_taps).map(|t| names.get(&t).map_or(format!("{t}"), |n| format!("{t} {n}"))).collect();
        Grid {
            title: title.into(),
            steps: steps.into_iter().collect(),
            taps,
            cells: sums.into_iter().map(|(k, (s, n))| (k, s / n as f64)).collect(),
        }
    }

    fn range(&self) -> Option<(f64, f64)> {
        let lo = self.cells.values().copied().fold(f64::INFINITY, f64::min);
        let hi = self.cells.values().copied().fold(f64::NEG_INFINITY, f64::max);
        lo.is_finite().then_some((lo, hi))
    }

    /// Column edges on the log axis: halfway between neighbouring checkpoints.
    fn edges(&self) -> Vec<(f64, f64)> {
        let x: Vec<f64> = self.steps.iter().map(|&s| log_step(s)).collect();
        (0..x.len())
            .map(|i| {
                let left = if i > 0 { (x[i - 1] + x[i]) / 2.0 } else { x[i] - x.get(1).map_or(0.15, |n| (n - x[i]) / 2.0) };
                let right =
                    if i + 1 < x.len() { (x[i] + x[i + 1]) / 2.0 } else { x[i] + if i > 0 { (x[i] - x[i - 1]) / 2.0 } else { 0.15 } };
                (left, right)
            })
            .collect()
    }
}

#[derive(Debug)]
pub struct Heatmaps {
    pub title: String,
    /// The colour bar's label: the metric (and analyzer).
    pub metric: String,
    pub panels: Vec<Grid>,
}

const PANEL: (u32, u32) = (460, 320);
const BAR: u32 = 120;
const TITLE: u32 = 40;

impl Heatmaps {
    fn layout(&self) -> (usize, usize) {
        let n = self.panels.len().max(1);
        let cols = (n as f64).sqrt().ceil() as usize;
        (n.div_ceil(cols), cols)
    }

    /// The colour scale shared by every panel.
    pub fn range(&self) -> (f64, f64) {
        let (lo, hi) =
            self.panels.iter().filter_map(Grid::range).fold((f64::INFINITY, f64::NEG_INFINITY), |a, b| (a.0.min(b.0), a.1.max(b.1)));
        if !lo.is_finite() {
            (0.0, 1.0)
        } else if hi - lo < 1e-12 {
            (lo - 0.5, hi + 0.5)
        } else {
            (lo, hi)
        }
    }
}

impl Figure for Heatmaps {
    fn size(&self) -> (u32, u32) {
        let (rows, cols) = self.layout();
        (PANEL.0 * cols as u32 + BAR, PANEL.1 * rows as u32 + TITLE)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        drawing(area.fill(&WHITE))?;
        let (w, _) = self.size();
        let titled = drawing(area.titled(&self.title, (FONT, 22)))?;
        let (grid_area, bar_area) = titled.split_horizontally(w - BAR);
        let (rows, cols) = self.layout();
        let range = self.range();
        let cells = grid_area.split_evenly((rows, cols));
        for (panel, cell) in self.panels.iter().zip(cells.iter()) {
            draw_panel(panel, cell, range)?;
        }
        draw_colour_bar(&bar_area, range, &self.metric)
    }
}

fn draw_panel<DB: DrawingBackend>(g: &Grid, area: &DrawingArea<DB, Shift>, (lo, hi): (f64, f64)) -> Result<()> {
    let edges = g.edges();
    let (x0, x1) = (edges.first().map_or(-0.5, |e| e.0), edges.last().map_or(1.0, |e| e.1));
    let n_taps = g.taps.len().max(1);
    let ticks = step_ticks(x0, x1);
    let taps = g.taps.clone();
    let mut chart = drawing(
        ChartBuilder::on(area).caption(&g.title, (FONT, 15)).margin(8).x_label_area_size(36).y_label_area_size(86).build_cartesian_2d(
            Ticked::new(x0..x1, ticks),
            Ticked::new(-0.5..n_taps as f64 - 0.5, (0..n_taps).map(|t| t as f64).collect()),
        ),
    )?;
    drawing(
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("step (log)")
            .y_desc("tap (shallow → deep)")
            .x_label_formatter(&|x| step_label(*x))
            .y_label_formatter(&|y| taps.get(y.round().max(0.0) as usize).cloned().unwrap_or_default())
            .label_style((FONT, 11))
            .axis_desc_style((FONT, 12))
            .draw(),
    )?;
    let missing = RGBColor(225, 225, 225);
    let mut rects = Vec::new();
    for (si, &step) in g.steps.iter().enumerate() {
        let (l, r) = edges[si];
        for tap in 0..g.taps.len() {
            let colour = match g.cells.get(&(step, tap)) {
                Some(v) => viridis((v - lo) / (hi - lo)),
                None => missing,
            };
            rects.push(Rectangle::new([(l, tap as f64 - 0.5), (r, tap as f64 + 0.5)], colour.filled()));
        }
    }
    drawing(chart.draw_series(rects))?;
    Ok(())
}

fn draw_colour_bar<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, (lo, hi): (f64, f64), label: &str) -> Result<()> {
    let mut chart = drawing(
        ChartBuilder::on(area).margin_top(40).margin_bottom(50).margin_right(8).y_label_area_size(70).build_cartesian_2d(0.0..1.0, lo..hi),
    )?;
    drawing(
        chart
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_desc(label)
            .y_labels(6)
            .y_label_formatter(&|v| short(*v))
            .label_style((FONT, 11))
            .axis_desc_style((FONT, 12))
            .draw(),
    )?;
    let n = 64;
    let step = (hi - lo) / n as f64;
    drawing(chart.draw_series((0..n).map(|i| {
        let a = lo + step * i as f64;
        Rectangle::new([(0.0, a), (1.0, a + step)], viridis((i as f64 + 0.5) / n as f64).filled())
    })))?;
    Ok(())
}
