//! `--emit slurm`: job-array scripts for a sweep, written to `SWEEP_DIR/slurm/`.
//!
//! - `train.sbatch`: one array task per run (`SLURM_ARRAY_TASK_ID` is the
//!   run's index in `sweep.json`), each `lintrace-train sweep DIR --only i`,
//!   which resumes an interrupted run and skips a finished one, so a
//!   resubmitted array only redoes what is missing.
//! - `analyze.sbatch`: the same array for `lintrace-analyze DIR --only i`;
//!   task i starts when training task i succeeded (`aftercorr`), and is
//!   cancelled if it failed (`--kill-on-invalid-dep`).
//! - `collect.sbatch`: after the analysis array ends, however it ended,
//!   writes the sweep-level `runs.parquet` (`lintrace-analyze DIR --collect`).
//! - `submit.sh`: submits the three with their dependencies.
//!
//! Tables stay plain Parquet in the run folders, so a shared filesystem is
//! all the cluster needs.

use super::file::{SlurmOptions, Sweep};
use crate::atomic::write_atomic;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Paths of the scripts written.
pub struct Emitted {
    pub train: PathBuf,
    pub analyze: PathBuf,
    pub collect: PathBuf,
    pub submit: PathBuf,
}

/// Single-quotes a word for bash.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn header(sweep: &Sweep, o: &SlurmOptions, job: &str, array: bool, logs: &Path) -> String {
    let mut h = String::from("#!/bin/bash\n");
    h.push_str(&format!("#SBATCH --job-name=lintrace-{job}-{}\n", sweep.name));
    if array {
        let last = sweep.runs.len().saturating_sub(1);
        let throttle = o.max_parallel.map(|k| format!("%{k}")).unwrap_or_default();
        h.push_str(&format!("#SBATCH --array=0-{last}{throttle}\n"));
        h.push_str(&format!("#SBATCH --output={}/slurm-{job}-%A_%a.out\n", logs.display()));
    } else {
        h.push_str(&format!("#SBATCH --output={}/slurm-{job}-%j.out\n", logs.display()));
    }
    if let Some(c) = o.cpus_per_task {
        h.push_str(&format!("#SBATCH --cpus-per-task={c}\n"));
    }
    if let Some(m) = &o.mem {
        h.push_str(&format!("#SBATCH --mem={m}\n"));
    }
    if let Some(t) = &o.time {
        h.push_str(&format!("#SBATCH --time={t}\n"));
    }
    if let Some(p) = &o.partition {
        h.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    if let Some(g) = o.gpus.filter(|&g| g > 0) {
        h.push_str(&format!("#SBATCH --gres=gpu:{g}\n"));
    }
    for x in &o.extra {
        h.push_str(&format!("#SBATCH {x}\n"));
    }
    h.push_str("# Written by `lintrace-train sweep --emit slurm`; see docs/sweeps-and-queries.md.\n");
    h.push_str("set -euo pipefail\n");
    for line in &o.setup {
        h.push_str(line);
        h.push('\n');
    }
    // Each task uses the CPUs it was given, not the whole node.
    h.push_str("export RAYON_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-1}\"\n");
    h
}

/// Writes the scripts. `bin_dir` is where lintrace's binaries are when the
/// sweep file does not say.
pub fn emit(sweep: &Sweep, bin_dir: &Path) -> Result<Emitted> {
    if sweep.runs.is_empty() {
        bail!("sweep {} has no runs", sweep.name);
    }
    let o = &sweep.slurm;
    // Jobs run from wherever Slurm puts them: every path is absolute.
    let dir = sweep.dir.canonicalize().with_context(|| format!("{}: cannot resolve", sweep.dir.display()))?;
    let bins = o.bin_dir.clone().unwrap_or_else(|| bin_dir.to_path_buf());
    let bins = bins.canonicalize().with_context(|| format!("{}: lintrace's binaries are not there", bins.display()))?;
    let (train_bin, analyze_bin) = (bins.join("lintrace-train"), bins.join("lintrace-analyze"));
    for b in [&train_bin, &analyze_bin] {
        if !b.is_file() {
            bail!("{}: not found (set bin_dir in [slurm])", b.display());
        }
    }
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("{}: cannot create", logs.display()))?;
    let slurm_dir = dir.join("slurm");
    let device = if o.gpus.unwrap_or(0) > 0 { "cuda" } else { "cpu" };
    let q = |p: &Path| quote(&p.display().to_string());
    let analyze_args: String = o.analyze_args.iter().map(|a| format!(" {}", quote(a))).collect();

    let train = format!(
        "{}exec {} sweep {} --only \"$SLURM_ARRAY_TASK_ID\" --quiet --device {device}\n",
        header(sweep, o, "train", true, &logs),
        q(&train_bin),
        q(&dir)
    );
    let analyze = format!(
        "{}exec {} {} --only \"$SLURM_ARRAY_TASK_ID\" --quiet --device {device}{analyze_args}\n",
        header(sweep, o, "analyze", true, &logs),
        q(&analyze_bin),
        q(&dir)
    );
    let collect = format!("{}exec {} {} --collect --quiet\n", header(sweep, o, "collect", false, &logs), q(&analyze_bin), q(&dir));
    let submit = format!(
        r#"#!/bin/bash
# Submits sweep {name}: training array → analysis array (task i after
# training task i) → the sweep table. Prints the three job ids.
set -euo pipefail
cd "$(dirname "$0")"
train=$(sbatch --parsable train.sbatch)
train=${{train%%;*}}
analyze=$(sbatch --parsable --dependency=aftercorr:$train --kill-on-invalid-dep=yes analyze.sbatch)
analyze=${{analyze%%;*}}
collect=$(sbatch --parsable --dependency=afterany:$analyze collect.sbatch)
collect=${{collect%%;*}}
echo "train=$train analyze=$analyze collect=$collect"
"#,
        name = sweep.name
    );
    let paths = Emitted {
        train: slurm_dir.join("train.sbatch"),
        analyze: slurm_dir.join("analyze.sbatch"),
        collect: slurm_dir.join("collect.sbatch"),
        submit: slurm_dir.join("submit.sh"),
    };
    for (p, text) in [(&paths.train, &train), (&paths.analyze, &analyze), (&paths.collect, &collect), (&paths.submit, &submit)] {
        write_atomic(p, text.as_bytes())?;
        set_executable(p)?;
    }
    Ok(paths)
}

fn set_executable(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).with_context(|| format!("{}: cannot make executable", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_select_runs_by_array_index_and_chain_dependencies() {
        let tmp = tempfile::tempdir().unwrap();
        let bins = tmp.path().join("bin");
        std::fs::create_dir_all(&bins).unwrap();
        for b in ["lintrace-train", "lintrace-analyze"] {
            std::fs::write(bins.join(b), "").unwrap();
        }
        let text = "[grid]\nseed = [0, 1, 2]\n[slurm]\ncpus_per_task = 2\nmax_parallel = 2\nextra = [\"--account=abc\"]\nanalyze_args = [\"--analyzers\", \"performance\"]";
        let sweep = Sweep::from_toml(text, "s", Some(tmp.path())).unwrap();
        sweep.write().unwrap();
        let e = emit(&sweep, &bins).unwrap();
        let train = std::fs::read_to_string(&e.train).unwrap();
        assert!(train.contains("#SBATCH --array=0-2%2\n"), "{train}");
        assert!(train.contains("#SBATCH --cpus-per-task=2\n#"));
        assert!(train.contains("#SBATCH --account=abc\n"));
        assert!(train.contains("sweep '") && train.contains("--only \"$SLURM_ARRAY_TASK_ID\""));
        let analyze = std::fs::read_to_string(&e.analyze).unwrap();
        assert!(analyze.ends_with("--device cpu '--analyzers' 'performance'\n"), "{analyze}");
        let submit = std::fs::read_to_string(&e.submit).unwrap();
        assert!(submit.contains("--dependency=aftercorr:$train"));
        assert!(submit.contains("--dependency=afterany:$analyze collect.sbatch"));
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
