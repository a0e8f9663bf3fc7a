//! Model metrics over log steps: one line per run, or per value of a sweep
//! axis (the mean over that value's runs), with a legend.

use super::data::ModelPoint;
use super::{drawing, log_step, series_color, short, step_label, step_ticks, Figure, Ticked, FONT};
use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Series {
    pub label: String,
    /// (step, mean value), sorted by step.
    pub points: Vec<(i64, f64)>,
}

impl Series {
    /// The mean of the points' values per step (null values are skipped).
    pub fn mean_of(label: impl Into<String>, points: &[&ModelPoint]) -> Series {
        let mut sums: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
        for p in points {
            if let Some(v) = p.value {
                let e = sums.entry(p.step).or_insert((0.0, 0));
                e.0 += v;
                e.1 += 1;
            }
        }
        Series { label: label.into(), points: sums.into_iter().map(|(s, (v, n))| (s, v / n as f64)).collect() }
    }
}

#[derive(Debug)]
pub struct Lines {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

impl Figure for Lines {
    fn size(&self) -> (u32, u32) {
        (760, 460)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        drawing(area.fill(&WHITE))?;
        let all: Vec<(f64, f64)> = self.series.iter().flat_map(|s| s.points.iter().map(|&(st, v)| (log_step(st), v))).collect();
        let (mut x0, mut x1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.0), a.1.max(p.0)));
        let (mut y0, mut y1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.1), a.1.max(p.1)));
        if !x0.is_finite() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        let pad_x = ((x1 - x0) * 0.03).max(0.05);
        let pad_y = ((y1 - y0) * 0.08).max(1e-3);
        let (x0, x1, y0, y1) = (x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y);
        let mut chart = drawing(
            ChartBuilder::on(area)
                .caption(&self.title, (FONT, 20))
                .margin(12)
                .x_label_area_size(44)
                .y_label_area_size(70)
                .build_cartesian_2d(Ticked::new(x0..x1, step_ticks(x0, x1)), y0..y1),
        )?;
        drawing(
            chart
                .configure_mesh()
                .x_desc("step (log)")
                .y_desc(&self.y_label)
                .x_label_formatter(&|x| step_label(*x))
                .y_label_formatter(&|y| short(*y))
                .label_style((FONT, 12))
                .axis_desc_style((FONT, 13))
                .light_line_style(RGBColor(235, 235, 235))
                .draw(),
        )?;
        for (i, s) in self.series.iter().enumerate() {
            let colour = series_color(i);
            let pts: Vec<(f64, f64)> = s.points.iter().map(|&(st, v)| (log_step(st), v)).collect();
            drawing(chart.draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2))))?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
            drawing(chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, colour.filled()))))?;
        }
        if !self.series.is_empty() {
            drawing(
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.85))
                    .border_style(RGBColor(180, 180, 180))
                    .label_font((FONT, 12))
                    .draw(),
            )?;
        }
        Ok(())
    }
}
