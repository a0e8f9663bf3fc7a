//! Figures, drawn with plotters to PNG and SVG from the tables alone:
//! depth × time heatmaps of a layer metric (one run, or a facet grid across
//! a sweep axis) and line plots of model metrics over log steps.
//!
//! A figure is drawn once per backend; PNGs are encoded in memory and every
//! file is written atomically. Text uses the DejaVu Sans font embedded in the
//! binary, so figures look the same on every machine and need no system
//! fonts.

pub mod data;
pub mod figures;
pub mod heatmap;
pub mod lines;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Once;

pub use heatmap::Heatmaps;
pub use lines::Lines;

pub const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The font is part of the binary; a failure here is a build defect.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

/// Something drawable on any plotters backend.
pub trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Turns a plotters error (whose type depends on the backend) into ours.
pub(crate) fn drawing<T, E: std::fmt::Debug>(r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| anyhow!("drawing failed: {e:?}"))
}

pub fn to_svg(fig: &impl Figure) -> Result<String> {
    register_font();
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, fig.size()).into_drawing_area();
        fig.draw(&area)?;
        drawing(area.present())?;
    }
    Ok(svg)
}

pub fn to_png(fig: &impl Figure) -> Result<Vec<u8>> {
    register_font();
    let (w, h) = fig.size();
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        fig.draw(&area)?;
        drawing(area.present())?;
    }
    let img = image::RgbImage::from_raw(w, h, rgb).context("bitmap has the wrong size")?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).context("PNG encoding failed")?;
    Ok(png)
}

/// Writes `STEM.png` and `STEM.svg`.
pub fn save(fig: &impl Figure, stem: &Path) -> Result<(PathBuf, PathBuf)> {
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    lintrace_core::atomic::write_atomic(&png, &to_png(fig)?)?;
    lintrace_core::atomic::write_atomic(&svg, to_svg(fig)?.as_bytes())?;
    Ok((png, svg))
}

/// An f64 axis whose ticks are given (plotters' own key-point wrapper loses
/// the value formatting that `configure_mesh` needs).
pub struct Ticked {
    inner: plotters::coord::types::RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ticked {
    pub fn new(range: std::ops::Range<f64>, ticks: Vec<f64>) -> Ticked {
        Ticked { inner: range.into(), ticks }
    }
}

impl plotters::coord::ranged1d::Ranged for Ticked {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;
    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }
    fn key_points<H: plotters::coord::ranged1d::KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        self.ticks.clone()
    }
    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

/// Where a step sits on the log axis; step 0 gets its own column at ½.
pub fn log_step(step: i64) -> f64 {
    (step.max(0) as f64).max(0.5).log10()
}

/// Axis label for a log position: the step it stands for.
pub fn step_label(x: f64) -> String {
    if x < -0.15 {
        "0".into()
    } else {
        let s = 10f64.powf(x);
        if s >= 1e4 {
            format!("1e{}", x.round() as i64)
        } else {
            format!("{}", s.round())
        }
    }
}

/// Tick positions for the log-step axis: step 0 and the decades in range.
pub fn step_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut t = Vec::new();
    if lo < -0.15 {
        t.push(log_step(0));
    }
    let mut d = lo.max(0.0).ceil();
    while d <= hi + 1e-9 {
        t.push(d);
        d += 1.0;
    }
    t
}

/// Viridis, interpolated between nine of its colours (perceptually uniform
/// and readable in grey and by colour-blind readers).
pub fn viridis(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

/// Ten distinguishable line colours (matplotlib's tab10).
pub fn series_color(i: usize) -> RGBColor {
    const TAB10: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    let c = TAB10[i % TAB10.len()];
    RGBColor(c.0, c.1, c.2)
}

/// A short number for labels.
pub fn short(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e4 || v.abs() < 1e-3 {
        format!("{v:.2e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}
