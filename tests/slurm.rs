//! The Slurm path for real (tests/slurm/sweep.sh): a one-node cluster on this
//! machine runs a two-run sweep's job arrays. It installs Debian's slurm-wlm
//! with apt, so it runs only when LINTRACE_SLURM_TEST=1 (CI sets it), and the
//! script says SKIP when Slurm cannot be installed or started here.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn a_sweep_runs_as_slurm_job_arrays() {
    if std::env::var("LINTRACE_SLURM_TEST").as_deref() != Ok("1") {
        eprintln!("SKIP: slurm tests: set LINTRACE_SLURM_TEST=1 to run them (they install slurm-wlm with apt-get)");
        return;
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_lintrace-train")).parent().expect("binary folder");
    assert!(bin_dir.join("lintrace-analyze").is_file(), "lintrace-analyze is built next to lintrace-train");
    let out = Command::new("bash").arg(common::repo().join("tests/slurm/sweep.sh")).arg(bin_dir).output().expect("bash runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "tests/slurm/sweep.sh failed:\n{text}");
    assert!(text.contains("PASS: slurm sweep") || text.contains("SKIP: slurm tests"), "{text}");
}
