//! Sweeps: a base config and axes expanded into runs that share one probe
//! (`file`), trained here with bounded parallelism and resumption (`local`)
//! or as Slurm job arrays (`slurm`).
//!
//! ```text
//! SWEEP_DIR/
//!   sweep.json            the expansion: every run's id, axis values and config
//!   RUN_ID/               one run folder per run (see run.rs)
//!   logs/                 one log per run (local) or per array task (Slurm)
//!   slurm/                scripts written by --emit slurm
//!   runs.parquet          written by lintrace-analyze: config, status, final metrics
//! ```

pub mod file;
pub mod local;
pub mod slurm;

pub use file::{Sweep, SweepRun};

use crate::train::{self, TrainOptions};
use anyhow::Result;

/// Trains the given runs one after the other in this process, resuming
/// interrupted ones and skipping finished ones (what one array task does).
pub fn train_in_process(sweep: &Sweep, runs: &[&SweepRun], device: &candle_core::Device, quiet: bool) -> Result<()> {
    for r in runs {
        let opts = TrainOptions { overwrite: false, resume: true, quiet, device: device.clone() };
        let before = local::run_status(sweep, r);
        let start = std::time::Instant::now();
        train::train(&r.config, &opts)?;
        if before == "finished" {
            println!("{}: already finished", r.run_id);
        } else {
            let how = if before == "pending" { "trained" } else { "resumed and finished" };
            println!("{}: {how} in {:.1}s", r.run_id, start.elapsed().as_secs_f64());
        }
    }
    Ok(())
}
