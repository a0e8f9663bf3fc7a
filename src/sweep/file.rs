//! A sweep file (TOML) and its expansion into runs.
//!
//! ```toml
//! name = "lr-study"          # sweep id (default: the file's stem)
//! out = "sweeps"             # the sweep lives in OUT/NAME (default: sweeps)
//!
//! [base]                     # any trainer key (as in lintrace-train --config)
//! model = "mlp"
//! dataset = "digits"
//! steps = 300
//!
//! [grid]                     # the product of these lists
//! lr = [0.01, 0.1]
//! seed = [0, 1]
//!
//! [zip]                      # parallel lists (same length), one axis together;
//! width = [64, 256]          # several groups: [[zip]] tables
//! depth = [2, 4]
//!
//! [slurm]                    # options for --emit slurm (see slurm.rs)
//! cpus_per_task = 2
//! ```
//!
//! Runs are the product of the axes (grid keys sorted by name, then each zip
//! group, its keys sorted), the last axis varying fastest. A run's id is the sweep name
//! and its axis values, `lr-study__lr-0.1__seed-1`: readable, stable when
//! other values are added, and unique across sweeps so tables join.

use crate::atomic::write_json_atomic;
use crate::config::TrainConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub use crate::layout::{SWEEP_FILE, SWEEP_FORMAT_VERSION as FORMAT_VERSION};

/// Keys the sweep sets itself, or that must not vary inside one sweep
/// (every run shares the probe, so its rows join).
const RESERVED: &[&str] = &["out", "name"];
const FIXED: &[&str] = &["probe_seed", "probe_size"];

/// One axis: a grid key, or a zip group of keys that move together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Axis {
    pub keys: Vec<String>,
    /// `values[i][k]` is key `k`'s value at position `i`.
    pub values: Vec<Vec<serde_json::Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRun {
    pub index: usize,
    pub run_id: String,
    /// The axis values of this run, in axis order.
    pub overrides: Vec<(String, serde_json::Value)>,
    pub config: TrainConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sweep {
    pub format_version: u32,
    pub name: String,
    /// The sweep folder (runs are its subfolders).
    #[serde(skip)]
    pub dir: PathBuf,
    /// The sweep file as written, for the record.
    pub source: String,
    pub axes: Vec<Axis>,
    pub runs: Vec<SweepRun>,
    #[serde(default)]
    pub slurm: SlurmOptions,
}

/// The `[slurm]` table of a sweep file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmOptions {
    /// `--cpus-per-task` (also the threads each task uses).
    pub cpus_per_task: Option<u32>,
    /// `--mem`, e.g. "8G".
    pub mem: Option<String>,
    /// `--time`, e.g. "02:00:00".
    pub time: Option<String>,
    pub partition: Option<String>,
    /// `--gres=gpu:N`; also makes the tasks run with `--device cuda`.
    pub gpus: Option<u32>,
    /// At most this many array tasks at once (`--array=0-N%K`).
    pub max_parallel: Option<usize>,
    /// Further `#SBATCH` options, e.g. ["--account=abc", "--qos=short"].
    pub extra: Vec<String>,
    /// Shell lines run before each task, e.g. ["module load cuda"].
    pub setup: Vec<String>,
    /// Arguments for lintrace-analyze, e.g. ["--analyzers", "performance,mu"].
    pub analyze_args: Vec<String>,
    /// Folder holding lintrace-train and lintrace-analyze (default: the
    /// folder of the running lintrace-train).
    pub bin_dir: Option<PathBuf>,
}

impl Sweep {
    /// Reads and expands a sweep file. `out` overrides the file's `out`.
    pub fn from_toml_file(path: &Path, out: Option<&Path>) -> Result<Sweep> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read sweep file", path.display()))?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "sweep".into());
        Self::from_toml(&text, &stem, out).with_context(|| format!("{}", path.display()))
    }

    pub fn from_toml(text: &str, default_name: &str, out: Option<&Path>) -> Result<Sweep> {
        let mut top: toml::Table = crate::config::parse_toml(text)?;
        for key in top.keys() {
            if !["name", "out", "base", "grid", "zip", "slurm"].contains(&key.as_str()) {
                bail!("unknown sweep key '{key}' (expected name, out, base, grid, zip, slurm)");
            }
        }
        let name = match top.remove("name") {
            Some(toml::Value::String(s)) => s,
            Some(_) => bail!("'name' must be a string"),
            None => default_name.to_string(),
        };
        if name.is_empty() || name.contains('/') || name.starts_with('.') || name.contains("__") {
            bail!("sweep name '{name}' must be a plain folder name without '__'");
        }
        let dir = match (out, top.remove("out")) {
            (Some(o), _) => o.to_path_buf(),
            (None, Some(toml::Value::String(s))) => PathBuf::from(s),
            (None, Some(_)) => bail!("'out' must be a string"),
            (None, None) => PathBuf::from("sweeps"),
        }
        .join(&name);
        let base = match top.remove("base") {
            Some(toml::Value::Table(t)) => t,
            Some(_) => bail!("[base] must be a table"),
            None => toml::Table::new(),
        };
        let known = TrainConfig::keys();
        for key in base.keys() {
            if RESERVED.contains(&key.as_str()) {
                bail!("[base] key '{key}' is set by the sweep (the sweep folder and run ids)");
            }
            if !known.contains(key) {
                bail!("[base]: unknown config key '{key}'");
            }
        }
        let mut axes = Vec::new();
        match top.remove("grid") {
            Some(toml::Value::Table(t)) => {
                for (key, values) in t {
                    axes.push(Axis { keys: vec![key.clone()], values: axis_values(&key, values)?.into_iter().map(|v| vec![v]).collect() });
                }
            }
            Some(_) => bail!("[grid] must be a table of lists"),
            None => {}
        }
        let zips = match top.remove("zip") {
            Some(toml::Value::Table(t)) => vec![t],
            Some(toml::Value::Array(a)) => a
                .into_iter()
                .map(|v| match v {
                    toml::Value::Table(t) => Ok(t),
                    _ => bail!("[[zip]] entries must be tables of lists"),
                })
                .collect::<Result<_>>()?,
            Some(_) => bail!("[zip] must be a table of lists"),
            None => Vec::new(),
        };
        for group in zips {
            let mut keys = Vec::new();
            let mut columns = Vec::new();
            for (key, values) in group {
                columns.push(axis_values(&key, values)?);
                keys.push(key);
            }
            let Some(len) = columns.first().map(Vec::len) else { continue };
            if let Some((k, c)) = keys.iter().zip(&columns).find(|(_, c)| c.len() != len) {
                bail!("[zip] lists must have the same length: '{}' has {len}, '{k}' has {}", keys[0], c.len());
            }
            let values = (0..len).map(|i| columns.iter().map(|c| c[i].clone()).collect()).collect();
            axes.push(Axis { keys, values });
        }
        let mut seen = BTreeSet::new();
        for key in axes.iter().flat_map(|a| &a.keys) {
            if !known.contains(key) {
                bail!("unknown config key '{key}' in an axis");
            }
            if RESERVED.contains(&key.as_str()) || FIXED.contains(&key.as_str()) {
                bail!("'{key}' cannot vary within a sweep (the sweep sets run names and folders, and every run shares one probe)");
            }
            if !seen.insert(key.clone()) {
                bail!("'{key}' appears in more than one axis");
            }
            if base.contains_key(key) {
                bail!("'{key}' is both in [base] and an axis");
            }
        }
        let slurm: SlurmOptions = match top.remove("slurm") {
            Some(v) => v.try_into().context("[slurm]")?,
            None => SlurmOptions::default(),
        };

        let mut runs = Vec::new();
        for (index, choice) in product(&axes.iter().map(|a| a.values.len()).collect::<Vec<_>>()).into_iter().enumerate() {
            let overrides: Vec<(String, serde_json::Value)> =
                axes.iter().zip(&choice).flat_map(|(a, &i)| a.keys.iter().cloned().zip(a.values[i].iter().cloned())).collect();
            let mut table = base.clone();
            for (k, v) in &overrides {
                table.insert(k.clone(), toml::Value::try_from(v).with_context(|| format!("'{k}' = {v}"))?);
            }
            let run_id = run_id(&name, &overrides);
            table.insert("name".into(), toml::Value::String(run_id.clone()));
            let mut config = TrainConfig::from_table(table).with_context(|| format!("run {run_id}"))?;
            config.out = dir.clone();
            config.check().with_context(|| format!("run {run_id}"))?;
            runs.push(SweepRun { index, run_id, overrides, config });
        }
        let mut ids = BTreeSet::new();
        if let Some(dup) = runs.iter().find(|r| !ids.insert(r.run_id.clone())) {
            bail!("two runs would share the id '{}' (axis values that differ only in characters a folder name cannot hold)", dup.run_id);
        }
        Ok(Sweep { format_version: FORMAT_VERSION, name, dir, source: text.to_string(), axes, runs, slurm })
    }

    /// Reads `DIR/sweep.json`.
    pub fn load(dir: &Path) -> Result<Sweep> {
        let mut sweep: Sweep = crate::layout::read_sweep_file(dir, |s: &Sweep| s.format_version)?;
        sweep.dir = dir.to_path_buf();
        // The folder may have moved (another mount point on a cluster).
        for r in &mut sweep.runs {
            r.config.out = dir.to_path_buf();
        }
        Ok(sweep)
    }

    pub fn is_sweep_dir(dir: &Path) -> bool {
        crate::layout::is_sweep_dir(dir)
    }

    /// A sweep file path, or a sweep folder written before.
    pub fn open(path: &Path, out: Option<&Path>) -> Result<Sweep> {
        if path.is_dir() {
            if !Self::is_sweep_dir(path) {
                bail!("{}: not a sweep folder (no {SWEEP_FILE}); give the sweep's TOML file", path.display());
            }
            Self::load(path)
        } else {
            Self::from_toml_file(path, out)
        }
    }

    /// Writes `sweep.json`, refusing to redefine a run that already exists
    /// with another config.
    pub fn write(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("{}: cannot create", self.dir.display()))?;
        if Self::is_sweep_dir(&self.dir) {
            let old = Self::load(&self.dir)?;
            for r in &self.runs {
                if let Some(o) = old.runs.iter().find(|o| o.run_id == r.run_id) {
                    if let Some(key) = o.config.first_difference(&r.config) {
                        bail!(
                            "{}: run {} was defined with another config ('{key}' differs); change the sweep's name or remove the folder",
                            self.dir.display(),
                            r.run_id
                        );
                    }
                }
            }
        }
        write_json_atomic(&self.dir.join(SWEEP_FILE), self)
    }

    /// Runs picked by `--only`: indices and run ids, comma-separated.
    pub fn select(&self, only: &str) -> Result<Vec<&SweepRun>> {
        only.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let found = match s.parse::<usize>() {
                    Ok(i) => self.runs.get(i),
                    Err(_) => self.runs.iter().find(|r| r.run_id == s),
                };
                found.with_context(|| format!("sweep {} has no run '{s}' ({} runs: 0..{})", self.name, self.runs.len(), self.runs.len()))
            })
            .collect()
    }

    pub fn run_dir(&self, run: &SweepRun) -> PathBuf {
        self.dir.join(&run.run_id)
    }
}

fn axis_values(key: &str, v: toml::Value) -> Result<Vec<serde_json::Value>> {
    let toml::Value::Array(items) = v else { bail!("axis '{key}' must be a list of values") };
    if items.is_empty() {
        bail!("axis '{key}' is empty");
    }
    items.into_iter().map(|x| serde_json::to_value(x).with_context(|| format!("axis '{key}'"))).collect()
}

/// Every combination of indices into lists of the given lengths, the last varying fastest.
fn product(lens: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new()];
    for &n in lens {
        out = out.into_iter().flat_map(|p| (0..n).map(move |i| [p.clone(), vec![i]].concat())).collect();
    }
    out
}

/// `lr-study__lr-0.1__conv-32+M`: the sweep name and each axis value.
fn run_id(sweep: &str, overrides: &[(String, serde_json::Value)]) -> String {
    let mut id = sweep.to_string();
    for (k, v) in overrides {
        id.push_str("__");
        id.push_str(k);
        id.push('-');
        id.push_str(&id_value(v));
    }
    if id.len() > 150 {
        let digest = Sha256::digest(id.as_bytes());
        let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        id = format!("{}-{hash}", id.chars().take(140).collect::<String>());
    }
    id
}

fn id_value(v: &serde_json::Value) -> String {
    use serde_json::Value as J;
    match v {
        J::Null => "none".into(),
        J::Bool(b) => b.to_string(),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) => f.to_string(),
            _ => n.to_string(),
        },
        J::String(s) => {
            let clean: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || ".-+".contains(c) { c } else { '_' }).collect();
            // A lone '_' keeps '__' free to separate axes.
            let mut out = String::new();
            for c in clean.chars() {
                if !(c == '_' && out.ends_with('_')) {
                    out.push(c);
                }
            }
            out.trim_matches('_').to_string()
        }
        J::Array(items) => items.iter().map(id_value).collect::<Vec<_>>().join("+"),
        J::Object(_) => "table".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
name = "study"
[base]
model = "mlp"
dataset = "sinusoid-2d"
steps = 10
[grid]
seed = [0, 1]
lr = [0.01, 0.1]
[zip]
width = [8, 16]
depth = [1, 2]
"#;

    #[test]
    fn expands_grid_and_zip_in_order_with_readable_ids() {
        let s = Sweep::from_toml(FILE, "x", Some(Path::new("/tmp/sw"))).unwrap();
        assert_eq!(s.dir, Path::new("/tmp/sw/study"));
        assert_eq!(s.runs.len(), 8);
        // Grid keys sorted (lr, seed), then the zip group; last fastest.
        assert_eq!(s.runs[0].run_id, "study__lr-0.01__seed-0__depth-1__width-8");
        assert_eq!(s.runs[1].run_id, "study__lr-0.01__seed-0__depth-2__width-16");
        assert_eq!(s.runs[7].run_id, "study__lr-0.1__seed-1__depth-2__width-16");
        assert_eq!(s.runs[7].config.lr, 0.1);
        assert_eq!(s.runs[7].config.width, 16);
        assert_eq!(s.runs[7].config.depth, 2);
        assert_eq!(s.runs[7].config.steps, 10);
        assert_eq!(s.runs[7].config.name, s.runs[7].run_id);
        assert!(s.runs.iter().all(|r| r.config.probe_seed == s.runs[0].config.probe_seed));
        // Deterministic.
        let again = Sweep::from_toml(FILE, "x", Some(Path::new("/tmp/sw"))).unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), serde_json::to_string(&again).unwrap());
    }

    #[test]
    fn rejects_bad_sweeps() {
        let bad = |text: &str, want: &str| {
            let e = format!("{:#}", Sweep::from_toml(text, "x", None).unwrap_err());
            assert!(e.contains(want), "{e:?} does not contain {want:?}");
        };
        bad("[grid]\nlrr = [1]", "unknown config key 'lrr'");
        bad("[grid]\nprobe_seed = [1, 2]", "cannot vary within a sweep");
        bad("[zip]\nlr = [0.1, 0.2]\nseed = [1]", "same length");
        bad("[grid]\nlr = []", "axis 'lr' is empty");
        bad("[grid]\nlr = 0.1", "must be a list");
        bad("[base]\nlr = 0.1\n[grid]\nlr = [0.2]", "both in [base] and an axis");
        bad("[base]\nname = \"a\"", "set by the sweep");
        bad("grdi = 1", "unknown sweep key 'grdi'");
        bad("[grid]\nlr = [-1.0]", "lr must be a positive number");
        bad("[grid]\ntargets = [\"teacher:a/b\", \"teacher:a_b\"]", "share the id");
    }

    #[test]
    fn list_and_string_values_make_folder_names() {
        let s = Sweep::from_toml("[grid]\nconv = [[16, \"M\"], [32]]\nactivation = [\"leaky_relu\"]", "conv", None).unwrap();
        assert_eq!(s.runs[0].run_id, "conv__activation-leaky_relu__conv-16+M");
        assert_eq!(s.runs[1].run_id, "conv__activation-leaky_relu__conv-32");
        let none = Sweep::from_toml("[base]\nlr = 0.2", "single", None).unwrap();
        assert_eq!(none.runs.len(), 1);
        assert_eq!(none.runs[0].run_id, "single");
    }
}
