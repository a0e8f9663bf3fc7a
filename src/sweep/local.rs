//! Running a sweep on this machine: at most `jobs` runs at once, each in a
//! child process (`lintrace-train sweep DIR --only i`, the command a Slurm
//! array task runs) with its share of the cores and its own log file, so a
//! run that fails or is killed leaves the others going.

use super::file::{Sweep, SweepRun};
use crate::run::RunManifest;
use anyhow::{Context, Result};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

pub struct LocalOptions {
    /// Runs trained at once.
    pub jobs: usize,
    /// Threads per run (default: the cores divided among the jobs).
    pub threads: Option<usize>,
    pub device: String,
    pub quiet: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Finished before this call.
    AlreadyFinished,
    /// Trained (or resumed) to the end now.
    Finished {
        seconds: f64,
    },
    Failed {
        message: String,
        log: PathBuf,
    },
}

/// Where a run of the sweep stands, from its folder alone.
pub fn run_status(sweep: &Sweep, r: &SweepRun) -> &'static str {
    let dir = sweep.run_dir(r);
    match RunManifest::read(&dir) {
        Ok(m) => m.status.as_str(),
        Err(_) if dir.exists() => "interrupted",
        Err(_) => "pending",
    }
}

pub fn log_path(sweep: &Sweep, r: &SweepRun) -> PathBuf {
    sweep.dir.join("logs").join(format!("{}.log", r.run_id))
}

/// Trains the selected runs of a written sweep; `exe` is lintrace-train.
pub fn run(sweep: &Sweep, selected: &[&SweepRun], opts: &LocalOptions, exe: &Path) -> Result<Vec<(String, Outcome)>> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (finished, todo): (Vec<&SweepRun>, Vec<&SweepRun>) =
        selected.iter().copied().partition(|r| matches!(run_status(sweep, r), "finished" | "diverged"));
    let todo = VecDeque::from(todo);
    let jobs = opts.jobs.clamp(1, todo.len().max(1));
    let threads = opts.threads.unwrap_or((cores / jobs).max(1));
    let mut outcomes: Vec<(String, Outcome)> = finished.iter().map(|r| (r.run_id.clone(), Outcome::AlreadyFinished)).collect();
    if !opts.quiet {
        eprintln!(
            "sweep {}: {} runs, {} finished before, {} to train ({} at once, {} threads each)",
            sweep.name,
            selected.len(),
            outcomes.len(),
            todo.len(),
            jobs,
            threads
        );
    }
    std::fs::create_dir_all(sweep.dir.join("logs")).with_context(|| format!("{}: cannot create logs folder", sweep.dir.display()))?;
    let total = todo.len();
    let queue = Mutex::new(todo);
    let results = Mutex::new(Vec::new());
    let done = Mutex::new(0usize);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                while let Some(r) = queue.lock().ok().and_then(|mut q| q.pop_front()) {
                    let outcome = train_child(sweep, r, threads, &opts.device, exe);
                    let n = done.lock().map(|mut d| {
                        *d += 1;
                        *d
                    });
                    if !opts.quiet {
                        let n = n.unwrap_or(0);
                        match &outcome {
                            Outcome::Finished { seconds } => eprintln!("[{n}/{total}] {} finished in {seconds:.1}s", r.run_id),
                            Outcome::Failed { message, log } => {
                                eprintln!("[{n}/{total}] {} FAILED: {message} (log: {})", r.run_id, log.display())
                            }
                            Outcome::AlreadyFinished => {}
                        }
                    }
                    if let Ok(mut v) = results.lock() {
                        v.push((r.index, r.run_id.clone(), outcome));
                    }
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_default();
    results.sort_by_key(|(i, _, _)| *i);
    outcomes.extend(results.into_iter().map(|(_, id, o)| (id, o)));
    Ok(outcomes)
}

fn train_child(sweep: &Sweep, r: &SweepRun, threads: usize, device: &str, exe: &Path) -> Outcome {
    let log = log_path(sweep, r);
    let start = Instant::now();
    let result = (|| -> Result<std::process::ExitStatus> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).with_context(|| format!("{}", log.display()))?;
        let status = Command::new(exe)
            .arg("sweep")
            .arg(&sweep.dir)
            .args(["--only", &r.index.to_string(), "--quiet", "--device", device])
            .env("RAYON_NUM_THREADS", threads.to_string())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .with_context(|| format!("{}: cannot start", exe.display()))?;
        Ok(status)
    })();
    match result {
        Ok(status) if status.success() => Outcome::Finished { seconds: start.elapsed().as_secs_f64() },
        Ok(status) => Outcome::Failed { message: last_error(&log).unwrap_or_else(|| format!("exited with {status}")), log },
        Err(e) => Outcome::Failed { message: format!("{e:#}"), log },
    }
}

/// The last `error:` line of a log, which names the problem.
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find(|l| l.starts_with("error:")).map(|l| l.trim_start_matches("error:").trim().to_string())
}
