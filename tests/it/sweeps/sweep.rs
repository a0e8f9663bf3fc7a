//! Sweeps end to end: expansion, parallel and resumable training, the
//! sweep-level runs table, SQL queries, the Python query examples, figures
//! and the report.

use crate::common::svg::{data_lines, heatmap_cells, svg_size};
use crate::common::*;
use lintrace::tables::{Table, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

const BASE: &str = r#"
[base]
model = "mlp"
width = 16
depth = 3
dataset = "sinusoid-2d"
n_train = 256
n_test = 128
steps = 20
batch_size = 32
probe_size = 64
"#;

fn write_sweep(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("name = \"{name}\"\n{BASE}{body}")).unwrap();
    path
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn column(t: &Table, name: &str) -> Vec<Value> {
    let i = t.column_index(name).unwrap_or_else(|| panic!("no column {name}"));
    t.rows.iter().map(|r| r[i].clone()).collect()
}

/// The (run_id, step, loss) rows of a Parquet file written by a query, read
/// back with polars (the file is zstd-compressed, which lintrace's own
/// Parquet reader is built without).
fn parquet_rows(path: &Path) -> Vec<(String, i64, f64)> {
    let code =
        "import sys, polars as pl\nfor r in pl.read_parquet(sys.argv[1]).select('run_id', 'step', 'loss').iter_rows(): print(*r, sep=',')";
    let o = Command::new("python3").args(["-c", code]).arg(path).output().expect("python3 runs");
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
        .lines()
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            (c[0].to_string(), c[1].parse().unwrap(), c[2].parse().unwrap())
        })
        .collect()
}

/// The sweep files the findings (docs/findings) name expand, and every run's
/// config passes the trainer's checks (no key the trainer would refuse or
/// ignore).
#[test]
fn the_example_sweep_files_expand() {
    let dir = repo().join("examples/sweeps");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    files.sort();
    assert!(files.len() >= 3, "examples/sweeps has its sweep files: {files:?}");
    let tmp = tempfile::tempdir().unwrap();
    for f in &files {
        let sweep = lintrace::sweep::Sweep::from_toml_file(f, Some(tmp.path())).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(sweep.runs.len() > 1, "{}: {} runs", f.display(), sweep.runs.len());
    }
    let seed = std::fs::read_to_string(repo().join("examples/recipes/seed.toml")).unwrap();
    lintrace::train::config::TrainConfig::from_toml(&seed).unwrap().check().unwrap();
}

#[test]
fn a_sweep_trains_in_parallel_shares_its_probe_and_joins_in_queries() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write_sweep(tmp.path(), "grid", "[grid]\nlr = [0.05, 0.2]\nseed = [0, 1]\n");
    let out = tmp.path().join("sweeps");
    let dir = out.join("grid");
    let o = run_ok(train_bin().args(["sweep"]).arg(&file).arg("--out").arg(&out).args(["--jobs", "2", "--quiet"]));
    assert!(stdout(&o).contains("4 runs, 4 trained now, 0 finished before, 0 failed"), "{}", stdout(&o));
    let ids = ["grid__lr-0.05__seed-0", "grid__lr-0.05__seed-1", "grid__lr-0.2__seed-0", "grid__lr-0.2__seed-1"];
    let mut probes = Vec::new();
    for id in ids {
        let m = lintrace::run::RunManifest::read(&dir.join(id)).unwrap();
        assert_eq!(m.status, lintrace::run::Status::Finished, "{id}");
        probes.push(m.probe_hash);
        assert!(dir.join("logs").join(format!("{id}.log")).is_file());
    }
    assert!(probes.iter().all(|p| *p == probes[0]), "every run of a sweep has the same probe");
    let sweep = lintrace::sweep::Sweep::load(&dir).unwrap();
    assert_eq!(sweep.runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ids);

    // Finished runs are skipped: nothing is retrained or rewritten.
    let before = files_under(&dir.join(ids[0]), &[]);
    let o = run_ok(train_bin().arg("sweep").arg(&dir).args(["--jobs", "2", "--quiet"]));
    assert!(stdout(&o).contains("0 trained now, 4 finished before"), "{}", stdout(&o));
    assert_eq!(files_under(&dir.join(ids[0]), &[]), before);

    // Analysis of the sweep folder writes the sweep-level runs table.
    run_ok(analyze_bin().arg(&dir).args(["--analyzers", "performance,activation_regime,unit_linear_fit", "--device", "cpu", "--quiet"]));
    let runs = Table::read(&dir.join("runs.parquet"), "runs").unwrap();
    assert_eq!(runs.rows.len(), 4);
    assert_eq!(column(&runs, "run_id"), ids.iter().map(|s| Value::Str(s.to_string())).collect::<Vec<_>>());
    assert!(column(&runs, "sweep_id").iter().all(|v| *v == Value::Str("grid".into())));
    assert!(column(&runs, "status").iter().all(|v| *v == Value::Str("finished".into())));
    assert_eq!(column(&runs, "config.lr"), [0.05, 0.05, 0.2, 0.2].map(Value::F64).to_vec());
    assert!(column(&runs, "final_step").iter().all(|v| *v == Value::I64(20)));
    let acc = column(&runs, "final.performance.accuracy");
    assert!(acc.iter().all(|v| v.as_f64().is_some_and(|a| (0.0..=1.0).contains(&a))), "{acc:?}");

    // SQL over the registered tables, checked against the tables themselves.
    let csv = tmp.path().join("q.csv");
    let sql = r#"SELECT r."config.lr" AS lr, COUNT(*) AS n, AVG(l.value) AS mean_active
                 FROM layer_metrics l JOIN runs r ON l.run_id = r.run_id
                 WHERE l.metric = 'frac_active' GROUP BY r."config.lr" ORDER BY lr"#;
    run_ok(analyze_bin().arg("query").arg(&dir).arg(sql).arg("--out").arg(&csv));
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "lr,n,mean_active");
    assert_eq!(lines.len(), 3, "{text}");
    // Each lr's row: the count and mean of frac_active over its two runs,
    // read from the runs' own tables.
    for (line, (lr, runs)) in lines[1..].iter().zip([("0.05", &ids[..2]), ("0.2", &ids[2..])]) {
        let mut want_n = 0;
        let mut sum = 0.0;
        for id in runs {
            let t = Table::read(&dir.join(id).join("analysis/layer_metrics.parquet"), "layer_metrics").unwrap();
            let (mi, vi) = (t.column_index("metric").unwrap(), t.column_index("value").unwrap());
            for r in t.rows.iter().filter(|r| r[mi].as_str() == Some("frac_active")) {
                want_n += 1;
                sum += r[vi].as_f64().unwrap();
            }
        }
        assert!(want_n > 0);
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), 3, "{line}");
        assert_eq!(cells[0], lr, "{text}");
        assert_eq!(cells[1].parse::<usize>().unwrap(), want_n, "{text}");
        assert_close(cells[2].parse::<f64>().unwrap(), sum / want_n as f64, 1e-9, &format!("mean frac_active at lr {lr}"));
    }
    // Printed to the terminal: every run, with its status, in order.
    let printed = run_ok(analyze_bin().arg("query").arg(&dir).arg("SELECT run_id, status FROM runs ORDER BY run_id"));
    let shown = stdout(&printed);
    let at: Vec<usize> = ids.iter().map(|id| shown.find(id).unwrap_or_else(|| panic!("{id} not printed:\n{shown}"))).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "runs not in order:\n{shown}");
    for id in ids {
        let line = shown.lines().find(|l| l.contains(id)).unwrap();
        assert!(line.contains("finished"), "{id}: {line}");
    }
    // Written as Parquet: the rows of train_log at steps 1 to 5 of every run,
    // values as in the runs' own train logs.
    let pq = tmp.path().join("q.parquet");
    run_ok(
        analyze_bin()
            .arg("query")
            .arg(&dir)
            .arg("SELECT run_id, step, loss FROM train_log WHERE step <= 5 ORDER BY run_id, step")
            .arg("--out")
            .arg(&pq),
    );
    let mut want = Vec::new();
    for id in ids {
        let t = Table::read(&dir.join(id).join("train_log.parquet"), "train_log").unwrap();
        let [si, li] = ["step", "loss"].map(|c| t.column_index(c).unwrap());
        for r in t.rows.iter().filter(|r| r[si].as_i64().unwrap() <= 5) {
            want.push((id.to_string(), r[si].as_i64().unwrap(), r[li].as_f64().unwrap()));
        }
    }
    assert_eq!(want.len(), 4 * 5);
    assert_eq!(parquet_rows(&pq), want);
    let bad = analyze_bin().arg("query").arg(&dir).arg("SELEKT nonsense").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).starts_with("error: SQL:"), "{}", stderr(&bad));

    // The Python query examples answer the study's questions on this sweep
    // (polars prints its tables as Markdown here, every row and column).
    let example = |script: &str| -> (String, Vec<Vec<String>>) {
        let o = Command::new("python3")
            .arg(repo().join("examples/queries").join(script))
            .arg(&dir)
            .envs([("POLARS_FMT_TABLE_FORMATTING", "ASCII_MARKDOWN"), ("POLARS_FMT_MAX_ROWS", "-1"), ("POLARS_FMT_MAX_COLS", "-1")])
            .envs([("POLARS_FMT_STR_LEN", "200"), ("POLARS_TABLE_WIDTH", "1000")])
            .output()
            .expect("python3 runs");
        assert!(o.status.success(), "{script}: {}", stderr(&o));
        let text = stdout(&o);
        let rows = text
            .lines()
            .filter(|l| l.starts_with('|') && !l.starts_with("|-") && !l.contains("| ---"))
            .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
            .collect();
        (text, rows)
    };
    // The first step past 0.5 nonlinearity: a row per lr, a column per tap.
    let (text, rows) = example("first_nonlinear_step.py");
    assert_eq!(rows.len(), 4, "{text}");
    assert_eq!(rows[0], ["lr", "0", "1", "2"], "{text}");
    assert_eq!((rows[2][0].as_str(), rows[3][0].as_str()), ("0.05", "0.2"), "{text}");
    // The mean final accuracy per lr: the runs table's, averaged.
    let (text, rows) = example("final_metrics_by_axis.py");
    assert_eq!(rows[0], ["metric", "0.05", "0.2"], "{text}");
    let row = rows.iter().find(|r| r[0] == "performance.accuracy").unwrap_or_else(|| panic!("{text}"));
    let acc: Vec<f64> = column(&runs, "final.performance.accuracy").iter().map(|v| v.as_f64().unwrap()).collect();
    assert_close(row[1].parse().unwrap(), (acc[0] + acc[1]) / 2.0, 1e-5, "final_metrics_by_axis.py: accuracy at lr 0.05");
    assert_close(row[2].parse().unwrap(), (acc[2] + acc[3]) / 2.0, 1e-5, "final_metrics_by_axis.py: accuracy at lr 0.2");
    assert!(text.contains("0 runs not finished"), "{text}");
    let (text, _) = example("linear_phase.py");
    assert!(!text.trim().is_empty(), "linear_phase.py printed nothing");

    // The recipes' per-run summaries read these tables too; summarize_turns'
    // mean minimum per lr is checked against the tables themselves.
    let o = Command::new("python3")
        .arg(repo().join("examples/recipes/summarize_sweep.py"))
        .arg(&dir)
        .args(["--axes", "lr,seed"])
        .output()
        .unwrap();
    assert!(o.status.success() && stdout(&o).contains("order_nl"), "summarize_sweep.py: {}", stderr(&o));
    let o = Command::new("python3")
        .arg(repo().join("examples/recipes/summarize_turns.py"))
        .arg(&dir)
        .args(["--axes", "lr,seed", "--group", "lr", "--csv"])
        .output()
        .unwrap();
    assert!(o.status.success(), "summarize_turns.py: {}", stderr(&o));
    let text = stdout(&o);
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let at = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name}: {header:?}"));
    let first: Vec<&str> = text.lines().nth(1).unwrap().split(',').collect();
    assert_eq!((first[at("lr")], first[at("runs")]), ("0.05", "2"), "{text}");
    let mut minima = Vec::new();
    for id in &ids[..2] {
        let t = Table::read(&dir.join(id).join("analysis/layer_metrics.parquet"), "layer_metrics").unwrap();
        let [a, m, tap, v] = ["analyzer", "metric", "tap", "value"].map(|c| t.column_index(c).unwrap());
        let nl = t
            .rows
            .iter()
            .filter(|r| r[a].as_str() == Some("unit_linear_fit") && r[m].as_str() == Some("nonlinearity") && r[tap].as_i64() == Some(0));
        minima.push(nl.map(|r| r[v].as_f64().unwrap()).fold(f64::INFINITY, f64::min));
    }
    let want = (minima[0] + minima[1]) / 2.0;
    assert_close(first[at("min t0")].parse::<f64>().unwrap(), want, 6e-4, "summarize_turns: mean minimum of tap 0 at lr 0.05");

    // Figures and the report from this sweep, checked against its tables.
    let layer: Vec<Table> =
        ids.iter().map(|id| Table::read(&dir.join(id).join("analysis/layer_metrics.parquet"), "layer_metrics").unwrap()).collect();
    let model: Vec<Table> =
        ids.iter().map(|id| Table::read(&dir.join(id).join("analysis/model_metrics.parquet"), "model_metrics").unwrap()).collect();
    let stem = tmp.path().join("facet");
    run_ok(
        analyze_bin()
            .args(["plot", "facet"])
            .arg(&dir)
            .args(["--metric", "nonlinearity", "--analyzer", "unit_linear_fit", "--by", "lr", "--out"])
            .arg(&stem),
    );
    // Two panels (lr 0.05 and 0.2) side by side and a colour bar: each
    // panel a cell for every (step, tap) its two runs have a value at, in
    // more than one colour, and its plotting area drawn in the PNG.
    let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
    let (w, h) = svg_size(&svg);
    assert_eq!((w, h), (2 * 460 + 120, 320 + 40), "two 460 × 320 panels, a colour bar and a title");
    let cells = heatmap_cells(&svg, w - 120);
    for (panel, runs) in [&ids[..2], &ids[2..]].iter().enumerate() {
        let want = layer_cells(&layer, runs, "unit_linear_fit", "nonlinearity");
        let mine: Vec<&(u32, String)> = cells.iter().filter(|(x, _)| (*x as usize) / 460 == panel).collect();
        assert_eq!(mine.len(), want, "panel {panel}: cells");
        assert!(mine.iter().map(|(_, fill)| fill).collect::<std::collections::BTreeSet<_>>().len() > 1, "panel {panel}: one colour");
    }
    assert_eq!(png_ink(&stem.with_extension("png"), (0, 0, 0, 0)).0, (w, h), "PNG and SVG sizes");
    for x0 in [120, 580] {
        let ((_, _), ink) = png_ink(&stem.with_extension("png"), (x0, 90, x0 + 280, h - 60));
        assert!(ink > 0.5, "the panel at x = {x0} is {:.0}% drawn", ink * 100.0);
    }

    run_ok(analyze_bin().arg("report").arg(&dir));
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(!html.contains("<script") && !html.contains("src=\"http"), "self-contained");
    assert!(html.contains("<h1>lintrace: grid</h1>"), "{}", &html[..html.len().min(2000)]);
    let h2: Vec<&str> = html.split("<h2>").skip(1).map(|p| p.split("</h2>").next().unwrap()).collect();
    assert_eq!(h2, ["Runs", "Layer metrics over depth and training", "Model metrics over training"]);
    // The runs table: a row per run, in order, with its status, axes and
    // final accuracy as in runs.parquet.
    let table = html.split("<table>").nth(1).and_then(|t| t.split("</table>").next()).expect("a runs table");
    let head: Vec<&str> = table.split("<th>").skip(1).map(|c| c.split("</th>").next().unwrap()).collect();
    assert_eq!(head[..7], ["run_id", "status", "steps_done", "total_steps", "final_step", "lr", "seed"], "{head:?}");
    let acc_col = head.iter().position(|c| *c == "final.performance.accuracy").expect("final accuracy column");
    let body = table.split("<tbody>").nth(1).unwrap();
    let rows: Vec<Vec<&str>> =
        body.split("<tr>").skip(1).map(|r| r.split("<td>").skip(1).map(|c| c.split("</td>").next().unwrap()).collect()).collect();
    assert_eq!(rows.len(), 4);
    let acc = column(&runs, "final.performance.accuracy");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), head.len());
        let lr = if i < 2 { "0.05" } else { "0.2" };
        assert_eq!(row[..7], [ids[i], "finished", "20", "20", "20", lr, ["0", "1"][i % 2]], "row {i}: {row:?}");
        assert_close(row[acc_col].parse::<f64>().unwrap(), acc[i].as_f64().unwrap(), 5e-4, "report: final accuracy");
    }
    // A figure for every metric in the tables (counts aside), each with the
    // data: heatmap cells of the four runs, a line and its points per run.
    let pairs = |tables: &[Table]| -> std::collections::BTreeSet<(String, String)> {
        tables
            .iter()
            .flat_map(|t| {
                let [a, m] = ["analyzer", "metric"].map(|c| t.column_index(c).unwrap());
                t.rows.iter().map(move |r| (r[a].as_str().unwrap().to_string(), r[m].as_str().unwrap().to_string()))
            })
            .filter(|(_, m)| !m.starts_with("n_"))
            .collect()
    };
    let (layer_pairs, model_pairs) = (pairs(&layer), pairs(&model));
    assert!(layer_pairs.len() >= 5 && model_pairs.len() >= 2, "{layer_pairs:?} {model_pairs:?}");
    assert_eq!(html.matches("<figure ").count(), layer_pairs.len() + model_pairs.len());
    let figure = |id: &str| -> String {
        let start = html.find(&format!("<figure id=\"{id}\">")).unwrap_or_else(|| panic!("no figure {id}"));
        html[start..].split("</figure>").next().unwrap().to_string()
    };
    for (a, m) in &layer_pairs {
        let svg = figure(&format!("layer-{a}-{m}"));
        let (w, _) = svg_size(&svg);
        let want: usize = ids.iter().map(|id| layer_cells(&layer, &[*id], a, m)).sum();
        assert_eq!(heatmap_cells(&svg, w - 120).len(), want, "{a}: {m}: heatmap cells of the four runs");
    }
    for (a, m) in &model_pairs {
        let svg = figure(&format!("model-{a}-{m}"));
        let (series, points) = model_points(&model, a, m);
        let lines = data_lines(&svg);
        assert_eq!(lines.len(), series, "{a}: {m}: lines");
        assert_eq!(lines.iter().sum::<usize>(), points, "{a}: {m}: points on the lines");
        assert_eq!(svg.matches("<circle").count(), points, "{a}: {m}: markers");
    }
}

/// How many (step, tap) cells `runs` have a value of `metric` at.
fn layer_cells(tables: &[Table], runs: &[&str], analyzer: &str, metric: &str) -> usize {
    let mut cells = std::collections::BTreeSet::new();
    for t in tables {
        let [run, a, m, step, tap, v] = ["run_id", "analyzer", "metric", "step", "tap", "value"].map(|c| t.column_index(c).unwrap());
        for r in &t.rows {
            if runs.contains(&r[run].as_str().unwrap())
                && r[a].as_str() == Some(analyzer)
                && r[m].as_str() == Some(metric)
                && r[v].as_f64().is_some()
            {
                cells.insert((r[step].as_i64().unwrap(), r[tap].as_i64().unwrap()));
            }
        }
    }
    cells.len()
}

/// The series (run × surrogate) and points (series × step) with a value of
/// a model metric.
fn model_points(tables: &[Table], analyzer: &str, metric: &str) -> (usize, usize) {
    let mut series = std::collections::BTreeSet::new();
    let mut points = std::collections::BTreeSet::new();
    for t in tables {
        let [run, a, m, step, sur, v] = ["run_id", "analyzer", "metric", "step", "surrogate", "value"].map(|c| t.column_index(c).unwrap());
        for r in &t.rows {
            if r[a].as_str() == Some(analyzer) && r[m].as_str() == Some(metric) && r[v].as_f64().is_some() {
                let key = (r[run].as_str().unwrap().to_string(), r[sur].to_text());
                points.insert((key.clone(), r[step].as_i64().unwrap()));
                series.insert(key);
            }
        }
    }
    (series.len(), points.len())
}

/// A PNG's size and the share of non-white pixels in a region.
fn png_ink(path: &Path, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> ((u32, u32), f64) {
    let img = image::open(path).unwrap().to_rgb8();
    let (mut ink, mut total) = (0usize, 0usize);
    for y in y0..y1.min(img.height()) {
        for x in x0..x1.min(img.width()) {
            total += 1;
            ink += (img.get_pixel(x, y).0 != [255, 255, 255]) as usize;
        }
    }
    ((img.width(), img.height()), ink as f64 / total.max(1) as f64)
}

#[test]
fn an_interrupted_run_resumes_to_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write_sweep(tmp.path(), "resume", "[grid]\noptimizer = [\"adam\", \"momentum\"]\n");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run_ok(train_bin().arg("sweep").arg(&file).arg("--out").arg(&a).arg("--quiet"));

    // Kill both runs of b between checkpoints (the hook exits as a kill would).
    for i in ["0", "1"] {
        let o = train_bin()
            .arg("sweep")
            .arg(&file)
            .arg("--out")
            .arg(&b)
            .args(["--only", i, "--quiet"])
            .env("LINTRACE_ABORT_AFTER_STEP", "15")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    }
    let sweep = lintrace::sweep::Sweep::load(&b.join("resume")).unwrap();
    for r in &sweep.runs {
        let m = lintrace::run::RunManifest::read(&sweep.run_dir(r)).unwrap();
        assert_eq!(m.status, lintrace::run::Status::Running);
        assert!(m.steps_done < 15 && m.steps_done > 0, "the last checkpoint is before the interruption: {}", m.steps_done);
    }
    let o = run_ok(train_bin().arg("sweep").arg(&file).arg("--out").arg(&b).arg("--quiet"));
    assert!(stdout(&o).contains("2 trained now"), "{}", stdout(&o));

    for r in &sweep.runs {
        let (ra, rb) = (a.join("resume").join(&r.run_id), b.join("resume").join(&r.run_id));
        let (fa, fb) = (files_under(&ra.join("checkpoints"), &[]), files_under(&rb.join("checkpoints"), &[]));
        assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
        for (name, ba) in &fa {
            assert!(*ba == fb[name], "{name}: resumed checkpoint differs from the uninterrupted one");
        }
        // The optimizer state matches too (all but the wall-clock time in it).
        let state = |d: &Path| {
            let (pos, buffers) = lintrace::train::state::load(d, &candle_core::Device::Cpu).unwrap();
            let bits = |m: &std::collections::HashMap<String, candle_core::Tensor>| {
                let mut v: Vec<(String, Vec<u32>)> = m
                    .iter()
                    .map(|(k, t)| (k.clone(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()))
                    .collect();
                v.sort();
                v
            };
            (lintrace::train::state::Position { wall_seconds: 0.0, ..pos }, bits(&buffers.m), bits(&buffers.v))
        };
        let (sa, sb) = (state(&ra), state(&rb));
        assert!(!sa.1.is_empty(), "momentum/first-moment buffers are saved");
        assert!(sa == sb, "optimizer state of {} differs after resuming", r.run_id);
        let log = |d: &Path| {
            let t = Table::read(&d.join("train_log.parquet"), "train_log").unwrap();
            let keep = ["step", "loss", "accuracy", "lr", "samples_seen"].map(|c| t.column_index(c).unwrap());
            t.rows.iter().map(|row| keep.iter().map(|&i| row[i].clone()).collect::<Vec<_>>()).collect::<Vec<_>>()
        };
        assert_eq!(log(&ra), log(&rb), "train log (steps redone after the interruption are not duplicated)");
    }
}

#[test]
fn pending_runs_appear_in_the_sweep_table_and_a_changed_sweep_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write_sweep(tmp.path(), "part", "[grid]\nseed = [0, 1]\n");
    let out = tmp.path().join("s");
    run_ok(train_bin().arg("sweep").arg(&file).arg("--out").arg(&out).args(["--only", "0", "--quiet"]));
    let dir = out.join("part");
    run_ok(analyze_bin().arg(&dir).args(["--analyzers", "performance", "--device", "cpu", "--quiet"]));
    let runs = Table::read(&dir.join("runs.parquet"), "runs").unwrap();
    assert_eq!(column(&runs, "status"), vec![Value::Str("finished".into()), Value::Str("pending".into())]);
    assert_eq!(column(&runs, "config.seed"), vec![Value::I64(0), Value::I64(1)]);
    assert!(column(&runs, "final.performance.accuracy")[1] == Value::Null);
    let dry = run_ok(train_bin().arg("sweep").arg(&dir).arg("--dry-run"));
    assert!(stdout(&dry).contains("pending") && stdout(&dry).contains("finished"));

    // --emit slurm writes executable scripts with absolute paths.
    run_ok(train_bin().arg("sweep").arg(&dir).args(["--emit", "slurm"]));
    for f in ["train.sbatch", "analyze.sbatch", "collect.sbatch", "submit.sh"] {
        let p = dir.join("slurm").join(f);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|_| panic!("{f} missing"));
        assert!(text.starts_with("#!/bin/bash"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o111, 0o111, "{f} is executable");
    }
    let train = std::fs::read_to_string(dir.join("slurm/train.sbatch")).unwrap();
    assert!(train.contains("#SBATCH --array=0-1\n") && train.contains(&dir.canonicalize().unwrap().display().to_string()));

    // Redefining an existing run under the same sweep name is refused.
    std::fs::write(&file, format!("name = \"part\"\n{}[grid]\nseed = [0, 1]\n", BASE.replace("steps = 20", "steps = 30"))).unwrap();
    let o = train_bin().arg("sweep").arg(&file).arg("--out").arg(&out).arg("--quiet").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("was defined with another config"), "{}", stderr(&o));
}

#[test]
fn queries_refuse_to_mix_probe_batches_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runs");
    tiny_mlp_run(&root, "p0", &["--probe-seed", "0"]);
    tiny_mlp_run(&root, "p1", &["--probe-seed", "1"]);
    run_ok(analyze_bin().arg(&root).args(["--analyzers", "performance", "--device", "cpu", "--quiet"]));
    let sql = "SELECT run_id, COUNT(*) AS n FROM model_metrics GROUP BY run_id";
    let o = analyze_bin().arg("query").arg(&root).arg(sql).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("2 different probe batches") && stderr(&o).contains("--allow-mixed-probes"), "{}", stderr(&o));
    let o = run_ok(analyze_bin().arg("query").arg(&root).arg(sql).arg("--allow-mixed-probes"));
    assert!(stdout(&o).contains("p1"));
    // Figures and reports read the same tables and refuse the same way.
    let fig = tmp.path().join("fig");
    let o = analyze_bin().args(["plot", "lines"]).arg(&root).args(["--metric", "accuracy", "--out"]).arg(&fig).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("2 different probe batches"), "{}", stderr(&o));
    run_ok(analyze_bin().args(["plot", "lines"]).arg(&root).args(["--metric", "accuracy", "--allow-mixed-probes", "--out"]).arg(&fig));
    let o = analyze_bin().arg("report").arg(&root).output().unwrap();
    assert!(stderr(&o).contains("2 different probe batches"), "{}", stderr(&o));
    assert!(!root.join("report.html").exists());
    run_ok(analyze_bin().arg("report").arg(&root).arg("--allow-mixed-probes"));
    // One run alone is one probe.
    run_ok(analyze_bin().arg("query").arg(root.join("p0")).arg(sql));
    let o = analyze_bin().arg("query").arg(tmp.path()).arg(sql).output().unwrap();
    assert!(stderr(&o).contains("no lintrace tables found"), "{}", stderr(&o));
}

/// A run whose loss stops being finite stops cleanly: run.json says
/// `diverged` with the step, the checkpoints before it are kept and
/// analysable, the trainer exits with its own status, and a sweep goes on
/// with its other runs, its table showing the status.
#[test]
fn a_diverging_run_is_marked_and_the_sweep_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write_sweep(tmp.path(), "div", "[grid]\nlr = [0.05, 1e12]\n");
    let out = tmp.path().join("s");
    let o = train_bin().arg("sweep").arg(&file).arg("--out").arg(&out).args(["--jobs", "2", "--quiet"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "a sweep with a diverged run reports it: {}", stdout(&o));
    assert!(stdout(&o).contains("1 trained now") && stdout(&o).contains("1 failed"), "{}", stdout(&o));
    let dir = out.join("div");
    let sweep = lintrace::sweep::Sweep::load(&dir).unwrap();
    let ok = lintrace::run::RunManifest::read(&dir.join(&sweep.runs[0].run_id)).unwrap();
    assert_eq!(ok.status, lintrace::run::Status::Finished);
    let bad_dir = dir.join(&sweep.runs[1].run_id);
    let bad = lintrace::run::RunManifest::read(&bad_dir).unwrap();
    assert_eq!(bad.status, lintrace::run::Status::Diverged);
    let step = bad.diverged_at_step.expect("the step is recorded");
    assert!(step >= 1 && step <= 20, "{step}");
    assert!(bad.error.as_deref().unwrap_or("").contains("diverged"), "{:?}", bad.error);
    let ckpts = lintrace::checkpoint::list(&lintrace::run::checkpoint_dir(&bad_dir), false).unwrap();
    assert!(!ckpts.is_empty(), "step 0's checkpoint is kept");
    assert!(ckpts.iter().all(|p| lintrace::checkpoint::step_from_file_name(p).is_some_and(|s| s < step)));

    // The single-run trainer exits with its own status for a diverged run.
    let o = train_bin()
        .args(["--model", "mlp", "--width", "16", "--depth", "3", "--dataset", "sinusoid-2d", "--n-train", "256", "--n-test", "128"])
        .args(["--steps", "20", "--batch-size", "32", "--lr", "1e12", "--probe-size", "64", "--quiet", "--name", "alone", "--out"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("diverged"), "{}", stderr(&o));

    // A rerun of the sweep does not retrain the diverged run, and the sweep
    // table shows both statuses; the diverged run's checkpoints analyse.
    let o = run_ok(train_bin().arg("sweep").arg(&dir).args(["--quiet"]));
    assert!(stdout(&o).contains("0 trained now, 2 finished before"), "{}", stdout(&o));
    run_ok(analyze_bin().arg(&dir).args(["--analyzers", "performance", "--device", "cpu", "--quiet"]));
    let runs = Table::read(&dir.join("runs.parquet"), "runs").unwrap();
    assert_eq!(column(&runs, "status"), vec![Value::Str("finished".into()), Value::Str("diverged".into())]);
}

/// The fixture tables (fixtures/tables, written by fixtures/make_tables.sh
/// and drawn on by the figure and report tests) are at the current schema
/// version of their table, and the current schemas are the newest files in
/// schemas/: a schema change that leaves the fixtures behind fails here
/// until they are regenerated.
#[test]
fn the_fixture_tables_are_at_the_current_schema_versions() {
    use lintrace::tables::schema;
    let mut newest = std::collections::BTreeMap::<String, u32>::new();
    for e in std::fs::read_dir(repo().join("schemas")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        let Some((table, v)) = name.strip_suffix(".json").and_then(|n| n.rsplit_once(".v")) else { continue };
        let v: u32 = v.parse().unwrap();
        let n = newest.entry(table.to_string()).or_default();
        *n = (*n).max(v);
    }
    assert!(newest.len() >= 5, "{newest:?}");
    for (table, v) in &newest {
        assert_eq!(schema::current(table).version, *v, "schemas/{table}.v{v}.json is newer than what lintrace calls current");
    }
    let mut files = Vec::new();
    let mut todo = vec![repo().join("fixtures/tables")];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                files.push(p);
            }
        }
    }
    files.sort();
    // 4 runs × (train_log + 4 analysis tables) + the sweep's runs table.
    assert_eq!(files.len(), 21, "{files:?}");
    let mut seen = std::collections::BTreeSet::new();
    for p in &files {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(p).unwrap()).unwrap();
        let md = reader.schema().metadata().clone();
        let table = md.get(schema::META_TABLE).unwrap_or_else(|| panic!("{}: no table name", p.display()));
        let version: u32 = md[schema::META_VERSION].parse().unwrap();
        let current = schema::current(table);
        assert_eq!(
            version,
            current.version,
            "{}: {table} v{version}, current v{}: regenerate with fixtures/make_tables.sh",
            p.display(),
            current.version
        );
        current.check(reader.schema()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(newest[table.as_str()], version);
        seen.insert(table.clone());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["checkpoints", "layer_metrics", "model_metrics", "runs", "train_log"]);
}
