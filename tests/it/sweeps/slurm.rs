//! The Slurm path for real (tests/slurm/sweep.sh): a one-node cluster on this
//! machine runs a two-run sweep's job arrays. It installs Debian's slurm-wlm
//! with apt, so it runs only when LINTRACE_SLURM_TEST=1 (.ci/run sets it), and
//! the script says SKIP when Slurm cannot be installed or started here. Under
//! CI (`CI` set, as CI services and .ci/run set it) or with
//! SLURM_TEST_REQUIRED=1, either skip is a failure; elsewhere it is printed
//! past the test harness's capture, so that a green run shows it.

use std::io::Write;
use std::path::Path;
use std::process::Command;

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Whether this run must run the Slurm test rather than skip it.
fn required() -> bool {
    flag("CI") || flag("SLURM_TEST_REQUIRED")
}

fn skip_loudly(reason: &str) {
    assert!(!required(), "the Slurm test did not run under CI (or SLURM_TEST_REQUIRED=1): {reason}");
    let _ = writeln!(std::io::stderr().lock(), "\n*** SKIPPED a_sweep_runs_as_slurm_job_arrays: {reason} ***\n");
}

#[test]
fn a_sweep_runs_as_slurm_job_arrays() {
    if std::env::var("LINTRACE_SLURM_TEST").as_deref() != Ok("1") {
        return skip_loudly("set LINTRACE_SLURM_TEST=1 to run it (it installs slurm-wlm with apt-get, as root)");
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_lintrace-train")).parent().expect("binary folder");
    assert!(bin_dir.join("lintrace-analyze").is_file(), "lintrace-analyze is built next to lintrace-train");
    // The script's query runs lintrace-query (a workspace member):
    // `cargo test --workspace` builds it, `cargo test --test it sweeps::slurm` alone does not.
    assert!(
        bin_dir.join("lintrace-query").is_file(),
        "lintrace-query is not built next to lintrace-train: run the workspace's tests, or `cargo build -p lintrace-query` first"
    );
    let mut cmd = Command::new("bash");
    cmd.arg(crate::common::repo().join("tests/slurm/sweep.sh")).arg(bin_dir);
    if required() {
        cmd.env("SLURM_TEST_REQUIRED", "1");
    }
    let out = cmd.output().expect("bash runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "tests/slurm/sweep.sh failed:\n{text}");
    if let Some(line) = text.lines().find(|l| l.starts_with("SKIP: slurm tests")) {
        return skip_loudly(line);
    }
    assert!(text.contains("PASS: slurm sweep"), "{text}");
}
