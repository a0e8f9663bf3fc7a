//! One writer per folder. Training a run and analysing a run each take an
//! exclusive lock on a file in the folder they write (`RUN_DIR/.lock`,
//! `RUN_DIR/analysis/.lock`), so a Slurm array task resubmitted by hand or a
//! second terminal cannot interleave its files with the first one's.
//!
//! The lock is the kernel's `flock` on that file: a process that dies, even
//! by SIGKILL, releases it, so a stale lock is taken over without anyone
//! having to delete it. The file also names its holder (pid, host, start
//! time) for the refusal message; it is emptied on a clean release, so a
//! non-empty file found free is the mark of a holder that died, which is
//! reported. On file systems where `flock` is not supported the lock cannot
//! be taken and the error says so.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

pub const FILE: &str = ".lock";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub started_unix: u64,
    pub command: String,
}

impl Holder {
    fn me() -> Holder {
        // The command line says which job holds the folder (a Slurm task, a
        // terminal); long ones are cut so the refusal stays one line.
        let mut command: String = std::env::args().collect::<Vec<_>>().join(" ");
        if command.chars().count() > 200 {
            command = command.chars().take(200).collect::<String>() + "…";
        }
        Holder {
            pid: std::process::id(),
            host: hostname(),
            started_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            command,
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {} on {}, since unix time {})", self.command, self.pid, self.host, self.started_unix)
    }
}

/// Held while the value lives; released (and the holder record cleared)
/// on drop, and by the kernel if the process dies.
#[derive(Debug)]
pub struct DirLock {
    file: File,
    path: PathBuf,
    /// The holder that died without releasing, if the lock was taken over.
    pub took_over: Option<Holder>,
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Takes the lock of `dir` (created if needed) for `what` ("training",
/// "analysis"), or fails with one line naming the holder.
pub fn acquire(dir: &Path, what: &str) -> Result<DirLock> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let path = dir.join(FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("{}: cannot open the lock file", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = read_holder(&mut file).map_or_else(|| "another process (no holder recorded yet)".to_string(), |h| h.to_string());
            bail!(
                "{}: {} is already running here: {holder}; wait for it to finish or stop it (the lock is released when it exits)",
                dir.display(),
                what
            );
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("{}: cannot lock (does this file system support flock?)", path.display()))
        }
    }
    let took_over = read_holder(&mut file);
    let me = Holder::me();
    let text = serde_json::to_string(&me)? + "\n";
    (|| -> std::io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    })()
    .with_context(|| format!("{}: cannot write the lock file", path.display()))?;
    // Whatever a dead holder was writing when it died is an orphan now.
    crate::atomic::remove_stale_temps(dir)?;
    if let Some(h) = &took_over {
        eprintln!("note: {}: took over the lock of {h}, which ended without releasing it", dir.display());
    }
    Ok(DirLock { file, path, took_over })
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

impl DirLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Emptied while still held: a free lock file with a holder in it
        // means that holder died.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}
