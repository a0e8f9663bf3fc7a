//! Figures and the report, drawn from the fixture tables in
//! fixtures/tables/grid (written by fixtures/make_tables.sh): files exist,
//! have the expected dimensions, and their plotting areas are not blank.

use lintrace_query::plot::data::Tables;
use lintrace_query::plot::{self, figures, Figure};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// This file is a test of the lintrace-query crate (src/query/Cargo.toml),
// so it has its own paths rather than tests/common's.
fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures").join(rel)
}

fn query_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lintrace-query"))
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("binary runs");
    assert!(out.status.success(), "command failed: {cmd:?}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn grid_dir() -> PathBuf {
    fixture("tables/grid")
}

fn grid() -> Tables {
    Tables::load(&grid_dir(), false).unwrap()
}

/// Decodes a PNG and returns (width, height, share of non-white pixels in
/// the given region, distinct colours there).
fn inspect_png(path: &Path, region: (u32, u32, u32, u32)) -> (u32, u32, f64, usize) {
    let img = image::open(path).unwrap().to_rgb8();
    let (x0, y0, x1, y1) = region;
    let mut ink = 0usize;
    let mut total = 0usize;
    let mut colours = std::collections::BTreeSet::new();
    for y in y0..y1.min(img.height()) {
        for x in x0..x1.min(img.width()) {
            let p = img.get_pixel(x, y).0;
            total += 1;
            if p != [255, 255, 255] {
                ink += 1;
            }
            colours.insert(p);
        }
    }
    (img.width(), img.height(), ink as f64 / total.max(1) as f64, colours.len())
}

fn check_svg(path: &Path, min_rects: usize) -> String {
    let svg = std::fs::read_to_string(path).unwrap();
    assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{}", &svg[..svg.len().min(80)]);
    let rects = svg.matches("<rect").count();
    assert!(rects >= min_rects, "{}: {rects} rects, want at least {min_rects}", path.display());
    svg
}

#[test]
fn heatmap_of_one_run_has_axes_colour_bar_and_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let fig = figures::heatmap(&grid(), Some("grid__lr-0.2__seed-0"), "nonlinearity", Some("unit_linear_fit")).unwrap();
    let g = &fig.panels[0];
    assert_eq!(g.taps.len(), 3, "three hidden layers");
    assert!(g.steps.len() >= 8 && g.steps[0] == 0 && *g.steps.last().unwrap() == 40);
    let (w, h) = fig.size();
    let (png, svg) = plot::save(&fig, &tmp.path().join("heat")).unwrap();
    // The panel's plotting area (inside the axes) is mostly coloured cells.
    let (pw, ph, ink, colours) = inspect_png(&png, (120, 90, w - 140, h - 60));
    assert_eq!((pw, ph), (w, h));
    assert!(ink > 0.5, "plotting area is {:.0}% drawn", ink * 100.0);
    assert!(colours > 10, "only {colours} colours: the cells do not vary");
    // The colour bar strip (right edge) is drawn too.
    let (_, _, bar_ink, _) = inspect_png(&png, (w - 45, 80, w - 12, h - 80));
    assert!(bar_ink > 0.3, "colour bar is {:.0}% drawn", bar_ink * 100.0);
    assert!(std::fs::metadata(&png).unwrap().len() > 5_000);
    let text = check_svg(&svg, g.steps.len() * g.taps.len() + 64);
    for label in ["step (log)", "tap (shallow → deep)", "unit_linear_fit: nonlinearity", "grid__lr-0.2__seed-0"] {
        assert!(text.contains(label) || text.contains(&label.replace('→', "&#8594;")), "SVG lacks '{label}'");
    }
}

#[test]
fn facet_grid_shares_one_colour_scale_across_a_sweep_axis() {
    let tmp = tempfile::tempdir().unwrap();
    let fig = figures::facet(&grid(), "frac_active", None, Some("lr")).unwrap();
    let titles: Vec<&str> = fig.panels.iter().map(|p| p.title.as_str()).collect();
    assert_eq!(titles, ["lr = 0.05 (mean of 2 runs)", "lr = 0.2 (mean of 2 runs)"]);
    let (lo, hi) = fig.range();
    for p in &fig.panels {
        assert!(p.cells.values().all(|v| *v >= lo && *v <= hi));
    }
    let (png, svg) = plot::save(&fig, &tmp.path().join("facet")).unwrap();
    let (w, h) = fig.size();
    assert_eq!(w, 2 * 460 + 120, "two panels side by side plus the colour bar");
    let (_, _, left, _) = inspect_png(&png, (120, 90, 400, h - 60));
    let (_, _, right, _) = inspect_png(&png, (580, 90, 860, h - 60));
    assert!(left > 0.5 && right > 0.5, "panels drawn: {left:.2} {right:.2}");
    check_svg(&svg, 2 * fig.panels[0].steps.len() * 3);
    // One panel per run without --by.
    assert_eq!(figures::facet(&grid(), "frac_active", None, None).unwrap().panels.len(), 4);
}

#[test]
fn line_plots_of_model_metrics_draw_a_line_per_group_and_surrogate() {
    let tmp = tempfile::tempdir().unwrap();
    let acc = figures::lines(&grid(), "accuracy", None, None, Some("lr")).unwrap();
    assert_eq!(acc.series.len(), 2);
    assert!(acc.series.iter().all(|s| s.points.len() >= 8 && s.points[0].0 == 0));
    let per_run = figures::lines(&grid(), "mu", None, Some("linear"), None).unwrap();
    assert_eq!(per_run.series.len(), 4);
    let depth = figures::lines(&grid(), "linear_prefix_depth", None, None, None).unwrap();
    assert_eq!(depth.series.len(), 4);
    for (name, fig) in [("acc", &acc), ("mu", &per_run), ("depth", &depth)] {
        let (png, svg) = plot::save(fig, &tmp.path().join(name)).unwrap();
        let (w, h) = fig.size();
        let (pw, ph, ink, colours) = inspect_png(&png, (90, 50, w - 20, h - 60));
        assert_eq!((pw, ph), (w, h));
        assert!(ink > 0.02, "{name}: plot area blank ({ink})");
        assert!(colours >= fig.series.len().min(10) + 2, "{name}: {colours} colours for {} lines", fig.series.len());
        let text = check_svg(&svg, 1);
        assert!(text.contains("<polyline") || text.contains("<path"), "{name}: no lines in the SVG");
    }
}

#[test]
fn figure_errors_name_the_problem() {
    let e = figures::facet(&grid(), "nonlinearity", None, None).unwrap_err().to_string();
    assert!(e.contains("several analyzers") && e.contains("--analyzer"), "{e}");
    let e = figures::heatmap(&grid(), None, "frac_active", None).unwrap_err().to_string();
    assert!(e.contains("--run"), "{e}");
    let e = figures::lines(&grid(), "accuracy", None, None, Some("no_such_key")).unwrap_err().to_string();
    assert!(e.contains("config.no_such_key"), "{e}");
    let e = figures::lines(&grid(), "nosuchmetric", None, None, None).unwrap_err().to_string();
    assert!(e.contains("no rows of metric 'nosuchmetric'"), "{e}");
}

#[test]
fn plot_and_report_commands_write_their_files() {
    let tmp = tempfile::tempdir().unwrap();
    let stem = tmp.path().join("h");
    run_ok(
        query_bin()
            .args(["plot", "heatmap"])
            .arg(grid_dir())
            .args(["--metric", "frac_active", "--run", "grid__lr-0.05__seed-1", "--out"])
            .arg(&stem),
    );
    assert!(stem.with_extension("png").is_file() && stem.with_extension("svg").is_file());
    let html = tmp.path().join("report.html");
    let o = run_ok(query_bin().arg("report").arg(grid_dir()).arg("--out").arg(&html));
    assert!(String::from_utf8_lossy(&o.stdout).contains("figures"));
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(text.starts_with("<!DOCTYPE html>"));
    assert!(!text.contains("<script") && !text.contains("src=\"http") && !text.contains("href=\"http"), "self-contained");
    assert!(text.matches("<svg").count() >= 6, "heatmaps and line plots inline");
    for id in ["grid__lr-0.05__seed-0", "final.performance.accuracy", "layer-activation_regime-frac_active", "model-mu-mu"] {
        assert!(text.contains(id) || text.contains(id.trim_start_matches("final.")), "report lacks {id}");
    }
}
