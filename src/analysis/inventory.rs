//! What a run's checkpoint folder holds, checked before anything is
//! analysed: every file is read once, its SHA-256 compared with the one
//! run.json recorded, and its weights hashed so that two steps (or two runs)
//! holding the same weights are caught (EleutherAI/pythia #83, #198, #205:
//! `step0` equal to `step1`, branches serving final-era weights) instead of
//! being analysed as different moments of training. The result is the
//! `checkpoints` table.

use super::target::Target;
use crate::checkpoint::{self, Fingerprint};
use crate::tables::{Table, Value};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Same weights as an earlier step of the same run: not analysed.
    Aliased,
    /// SHA-256 differs from run.json's: not analysed.
    Changed,
    /// Recorded in run.json, but the file is gone.
    Missing,
    Unreadable,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Aliased => "aliased",
            Status::Changed => "changed",
            Status::Missing => "missing",
            Status::Unreadable => "unreadable",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    /// The file name, or a Hugging Face revision's name.
    pub name: String,
    pub step: Option<u64>,
    pub fingerprint: Option<Fingerprint>,
    pub status: Status,
    /// (run id, step) of the first checkpoint seen with the same weights.
    pub aliased_with: Option<(String, u64)>,
    /// Why the file is not analysed (changed, missing, unreadable, aliased).
    pub problem: Option<String>,
}

impl Entry {
    /// Whether the file should go on to be analysed.
    pub fn analysable(&self) -> bool {
        self.status == Status::Ok
    }
}

/// Weights already seen in this analysis, across its runs.
#[derive(Debug, Default)]
pub struct Seen {
    /// weights SHA-256 → (run id, step) where first seen.
    first: HashMap<String, (String, u64)>,
    /// Runs whose step 0 equals another run's step 0 (expected for runs
    /// with the same seed and init; only counted).
    pub shared_step0: usize,
}

/// Reads and checks every checkpoint of `target` (in parallel), in step
/// order, and marks aliases against `seen` (updated).
pub fn take(target: &Target, seen: &mut Seen) -> Vec<Entry> {
    let mut entries: Vec<Entry> = target
        .checkpoints
        .par_iter()
        .map(|path| {
            let step = target.step_of(path);
            let mut e = Entry {
                path: path.clone(),
                name: target.checkpoint_name(path),
                step,
                fingerprint: None,
                status: Status::Ok,
                aliased_with: None,
                problem: None,
            };
            let fp = if path.is_dir() { crate::hf::load::fingerprint(path) } else { checkpoint::fingerprint(path) };
            match fp {
                Err(err) => {
                    e.status = Status::Unreadable;
                    e.problem = Some(format!("{err:#}"));
                }
                Ok(fp) => {
                    if let Some(recorded) = step.and_then(|s| target.recorded_sha256(s)) {
                        if let Err(err) = checkpoint::check_recorded(path, &fp, recorded) {
                            e.status = Status::Changed;
                            e.problem = Some(format!("{err:#}"));
                        }
                    }
                    e.fingerprint = Some(fp);
                }
            }
            e
        })
        .collect();
    entries.sort_by_key(|e| (e.step, e.path.clone()));
    for e in entries.iter_mut().filter(|e| e.status == Status::Ok) {
        let (Some(step), Some(w)) = (e.step, e.fingerprint.as_ref().and_then(|f| f.weights_sha256.clone())) else { continue };
        match seen.first.get(&w) {
            None => {
                seen.first.insert(w, (target.run_id.clone(), step));
            }
            Some((run, s)) => {
                e.aliased_with = Some((run.clone(), *s));
                if *run == target.run_id {
                    e.status = Status::Aliased;
                    e.problem = Some(format!(
                        "{}: holds the same weights as step {s} of this run: not analysed as a separate moment of training (checkpoints.parquet, status aliased)",
                        e.path.display()
                    ));
                }
            }
        }
    }
    for path in target.missing_checkpoints() {
        let step = target.step_of(&path);
        entries.push(Entry {
            name: target.checkpoint_name(&path),
            problem: Some(format!("{}: recorded in run.json as written, but the file is missing", path.display())),
            path,
            step,
            fingerprint: None,
            status: Status::Missing,
            aliased_with: None,
        });
    }
    entries
}

/// The `checkpoints` table of one run.
pub fn table(run_id: &str, entries: &[Entry]) -> Table {
    let mut t = Table::new("checkpoints");
    let s = |v: Option<String>| v.map_or(Value::Null, Value::Str);
    for e in entries {
        let fp = e.fingerprint.as_ref();
        t.push(vec![
            Value::Str(run_id.to_string()),
            e.step.map_or(Value::Null, |x| Value::I64(x as i64)),
            Value::Str(e.name.clone()),
            Value::Str(e.status.as_str().into()),
            s(fp.map(|f| f.file_sha256.clone())),
            s(fp.and_then(|f| f.weights_sha256.clone())),
            s(e.aliased_with.as_ref().map(|a| a.0.clone())),
            e.aliased_with.as_ref().map_or(Value::Null, |a| Value::I64(a.1 as i64)),
            Value::Str(env!("CARGO_PKG_VERSION").into()),
        ]);
    }
    t
}
