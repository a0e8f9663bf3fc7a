//! Figures and the report, drawn from the fixture tables in
//! fixtures/tables/grid (written by fixtures/make_tables.sh): files exist,
//! have the expected dimensions, and their plotting areas are not blank.

#[path = "../it/common/svg.rs"]
mod svg;

use lintrace_query::plot::data::Tables;
use lintrace_query::plot::{self, figures, Figure};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use svg::{data_lines, heatmap_cells, svg_size};

// This file is a test of the lintrace-query crate (src/query/Cargo.toml),
// so it has its own paths rather than tests/it/common's.
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
    assert_eq!(svg_size(&text), (w, h));
    assert_eq!(heatmap_cells(&text, w - 120).len(), g.cells.len(), "a coloured cell per value");
    assert_eq!(g.cells.len(), g.steps.len() * g.taps.len(), "the fixture has every (step, tap)");
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
    let text = check_svg(&svg, 2 * fig.panels[0].steps.len() * 3);
    assert_eq!(svg_size(&text), (w, h));
    assert_eq!(heatmap_cells(&text, w - 120).len(), fig.panels.iter().map(|p| p.cells.len()).sum::<usize>(), "a coloured cell per value");
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
        // A line (width 2) per series through all its points, and a marker per point.
        let mut lines = data_lines(&text);
        let mut want: Vec<usize> = fig.series.iter().map(|s| s.points.len()).collect();
        lines.sort();
        want.sort();
        assert_eq!(lines, want, "{name}: the SVG's lines and their points");
        assert_eq!(text.matches("<circle").count(), want.iter().sum::<usize>(), "{name}: markers");
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
    // The heatmap the command drew: the library's figure for that run, at
    // its size, a coloured cell per value, the plotting area drawn.
    let fig = figures::heatmap(&grid(), Some("grid__lr-0.05__seed-1"), "frac_active", None).unwrap();
    let (w, h) = fig.size();
    let (pw, ph, ink, _) = inspect_png(&stem.with_extension("png"), (120, 90, w - 140, h - 60));
    assert_eq!((pw, ph), (w, h));
    assert!(ink > 0.5, "plotting area is {:.0}% drawn", ink * 100.0);
    let text = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
    assert_eq!(svg_size(&text), (w, h));
    assert_eq!(heatmap_cells(&text, w - 120).len(), fig.panels[0].cells.len());
    assert!(fig.panels[0].cells.len() >= 8 * 3);

    let html = tmp.path().join("report.html");
    let o = run_ok(query_bin().arg("report").arg(grid_dir()).arg("--out").arg(&html));
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(text.starts_with("<!DOCTYPE html>"));
    assert!(!text.contains("<script") && !text.contains("src=\"http") && !text.contains("href=\"http"), "self-contained");
    assert!(text.contains("<h1>lintrace: grid</h1>"));
    let h2: Vec<&str> = text.split("<h2>").skip(1).map(|p| p.split("</h2>").next().unwrap()).collect();
    assert_eq!(h2, ["Runs", "Layer metrics over depth and training", "Model metrics over training"]);
    // The runs table: the four runs in order, finished at step 40, their axes.
    let table = text.split("<table>").nth(1).and_then(|t| t.split("</table>").next()).expect("a runs table");
    let head: Vec<&str> = table.split("<th>").skip(1).map(|c| c.split("</th>").next().unwrap()).collect();
    assert_eq!(head[..7], ["run_id", "status", "steps_done", "total_steps", "final_step", "lr", "seed"], "{head:?}");
    assert!(head.contains(&"final.performance.accuracy") && head.contains(&"final.mu.mu.linear"), "{head:?}");
    let rows: Vec<Vec<&str>> = table
        .split("<tbody>")
        .nth(1)
        .unwrap()
        .split("<tr>")
        .skip(1)
        .map(|r| r.split("<td>").skip(1).map(|c| c.split("</td>").next().unwrap()).collect())
        .collect();
    let ids = ["grid__lr-0.05__seed-0", "grid__lr-0.05__seed-1", "grid__lr-0.2__seed-0", "grid__lr-0.2__seed-1"];
    assert_eq!(rows.len(), 4);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), head.len());
        assert_eq!(row[..7], [ids[i], "finished", "40", "40", "40", ["0.05", "0.2"][i / 2], ["0", "1"][i % 2]], "{row:?}");
    }
    // A figure per metric (counts aside), each drawn from the fixture's data.
    let tables = grid();
    let layer: std::collections::BTreeSet<(&str, &str)> =
        tables.layer.iter().map(|p| (p.analyzer.as_str(), p.metric.as_str())).filter(|(_, m)| !m.starts_with("n_")).collect();
    let model: std::collections::BTreeSet<(&str, &str)> =
        tables.model.iter().map(|p| (p.analyzer.as_str(), p.metric.as_str())).filter(|(_, m)| !m.starts_with("n_")).collect();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("{} figures", layer.len() + model.len())),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(text.matches("<figure ").count(), layer.len() + model.len());
    let figure = |id: String| -> String {
        let start = text.find(&format!("<figure id=\"{id}\">")).unwrap_or_else(|| panic!("no figure {id}"));
        text[start..].split("</figure>").next().unwrap().to_string()
    };
    for (a, m) in &layer {
        let svg = figure(format!("layer-{a}-{m}"));
        let fig = figures::facet(&tables, m, Some(a), None).unwrap();
        assert_eq!(fig.panels.len(), 4, "{a}: {m}: a panel per run");
        let (w, _) = svg_size(&svg);
        assert_eq!(heatmap_cells(&svg, w - 120).len(), fig.panels.iter().map(|p| p.cells.len()).sum::<usize>(), "{a}: {m}: cells");
    }
    for (a, m) in &model {
        let svg = figure(format!("model-{a}-{m}"));
        let fig = figures::lines(&tables, m, Some(a), None, None).unwrap();
        let mut lines = data_lines(&svg);
        let mut want: Vec<usize> = fig.series.iter().map(|s| s.points.len()).collect();
        lines.sort();
        want.sort();
        assert_eq!(lines, want, "{a}: {m}: lines and their points");
    }
    for id in ["layer-activation_regime-frac_active", "model-mu-mu", "model-performance-accuracy"] {
        assert!(text.contains(&format!("<figure id=\"{id}\">")), "report lacks {id}");
    }
}
