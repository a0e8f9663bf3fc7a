//! Named points where a test can stop a real process, so that kills, full
//! disks and concurrent writers are tested at exact moments rather than at
//! whatever moment a timer happens to hit.
//!
//! `LINTRACE_PAUSE_AT=POINT[#N]` makes the N-th (default first) arrival at
//! POINT print `LINTRACE_PAUSED POINT` on stderr and sleep until the
//! process is killed. Points are `step:K` (step K computed, not yet applied)
//! and `write:FILE_NAME` (the temporary file of FILE_NAME fully written and
//! synced, not yet renamed into place). Without the variable a point costs
//! one environment lookup, made once per process.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

struct Pause {
    point: String,
    nth: usize,
}

fn wanted() -> Option<&'static Pause> {
    static WANTED: OnceLock<Option<Pause>> = OnceLock::new();
    WANTED
        .get_or_init(|| {
            let v = std::env::var("LINTRACE_PAUSE_AT").ok()?;
            let (point, nth) = match v.rsplit_once('#') {
                Some((p, n)) => (p.to_string(), n.parse().ok()?),
                None => (v, 1),
            };
            Some(Pause { point, nth })
        })
        .as_ref()
}

/// Whether a pause was asked for at all (to skip building point names).
pub fn active() -> bool {
    wanted().is_some()
}

/// Marks arrival at `point`; pauses forever if a test asked for it.
pub fn point(point: &str) {
    let Some(w) = wanted() else { return };
    if w.point != point {
        return;
    }
    static SEEN: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    let n = {
        let mut seen = SEEN.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        let n = seen.entry(point.to_string()).or_insert(0);
        *n += 1;
        *n
    };
    if n == w.nth {
        let mut err = std::io::stderr();
        let _ = writeln!(err, "LINTRACE_PAUSED {point}");
        let _ = err.flush();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
