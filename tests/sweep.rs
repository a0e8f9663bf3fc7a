//! Sweeps end to end: expansion, parallel and resumable training, the
//! sweep-level runs table, SQL queries, the Python query examples, figures
//! and the report.

mod common;

use common::*;
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

/// The sweep files the README's experiments name expand, and every run's
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
    let mut want_n = 0;
    let mut sum = 0.0;
    for id in &ids[..2] {
        let t = Table::read(&dir.join(id).join("analysis/layer_metrics.parquet"), "layer_metrics").unwrap();
        let (mi, vi) = (t.column_index("metric").unwrap(), t.column_index("value").unwrap());
        for r in t.rows.iter().filter(|r| r[mi].as_str() == Some("frac_active")) {
            want_n += 1;
            sum += r[vi].as_f64().unwrap();
        }
    }
    let first: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(first[0], "0.05");
    assert_eq!(first[1].parse::<usize>().unwrap(), want_n);
    assert_close(first[2].parse::<f64>().unwrap(), sum / want_n as f64, 1e-9, "mean frac_active at lr 0.05");
    assert_eq!(lines.len(), 3);
    let printed = run_ok(analyze_bin().arg("query").arg(&dir).arg("SELECT run_id, status FROM runs ORDER BY run_id"));
    assert!(stdout(&printed).contains("grid__lr-0.2__seed-1"), "{}", stdout(&printed));
    let pq = tmp.path().join("q.parquet");
    run_ok(analyze_bin().arg("query").arg(&dir).arg("SELECT step, loss FROM train_log WHERE step <= 5").arg("--out").arg(&pq));
    assert!(std::fs::metadata(&pq).unwrap().len() > 0);
    let bad = analyze_bin().arg("query").arg(&dir).arg("SELEKT nonsense").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).starts_with("error: SQL:"), "{}", stderr(&bad));

    // The Python query examples answer the study's questions on this sweep.
    for script in ["first_nonlinear_step.py", "final_metrics_by_axis.py", "linear_phase.py"] {
        let o = Command::new("python3").arg(repo().join("examples/queries").join(script)).arg(&dir).output().expect("python3 runs");
        assert!(o.status.success(), "{script}: {}", stderr(&o));
        assert!(!o.stdout.is_empty(), "{script} printed nothing");
    }

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

    // Figures and the report from this sweep.
    let stem = tmp.path().join("facet");
    run_ok(
        analyze_bin()
            .args(["plot", "facet"])
            .arg(&dir)
            .args(["--metric", "nonlinearity", "--analyzer", "unit_linear_fit", "--by", "lr", "--out"])
            .arg(&stem),
    );
    assert!(stem.with_extension("png").is_file() && stem.with_extension("svg").is_file());
    run_ok(analyze_bin().arg("report").arg(&dir));
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("grid__lr-0.2__seed-1") && !html.contains("<script"));
    assert!(html.contains("id=\"layer-unit_linear_fit-nonlinearity\"") && html.contains("id=\"model-performance-accuracy\""));
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
