//! A series of Hugging Face revisions on disk: revision folders
//! (`step1000/`, `checkpoint-500/`, `stage1-step140000-tokens294B/`,
//! `step-1431k/`, `ckpt_358/`), or a Hugging Face cache repository
//! (`models--ORG--NAME/refs/<revision>` holding a commit hash, the files in
//! `snapshots/<hash>/`). The step comes from the revision name, never from
//! a snapshot's 40-hex folder name.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// One revision of a series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// As the hub names it (`step1000`), or the folder's name.
    pub name: String,
    /// The folder holding `config.json` and the weights.
    pub dir: PathBuf,
    /// Training stage, where step counts restart per stage (OLMo-2).
    pub stage: Option<u64>,
    pub step: Option<u64>,
}

/// (stage, step) of a revision name. `k` after the digits means thousands.
pub fn parse_revision(name: &str) -> (Option<u64>, Option<u64>) {
    static STAGE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    static STEP: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    static NAMED: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let stage = STAGE.get_or_init(|| regex::Regex::new(r"(?i)(?:^|[^a-z])stage[-_]?(\d+)").expect("valid regex"));
    let step = STEP.get_or_init(|| regex::Regex::new(r"(?i)step[-_=]?(\d+)(k?)").expect("valid regex"));
    let named = NAMED.get_or_init(|| regex::Regex::new(r"(?i)(?:checkpoint|ckpt|iter|global_step)[-_=]?(\d+)(k?)").expect("valid regex"));
    let number = |c: regex::Captures<'_>| -> Option<u64> {
        let n: u64 = c.get(1)?.as_str().parse().ok()?;
        if c.get(2).is_some_and(|k| !k.as_str().is_empty()) {
            n.checked_mul(1000)
        } else {
            Some(n)
        }
    };
    let stage_no = stage.captures(name).and_then(|c| c.get(1)?.as_str().parse().ok());
    let step_no = step.captures_iter(name).last().and_then(number).or_else(|| named.captures_iter(name).last().and_then(number));
    (stage_no, step_no)
}

/// The trajectory a Hugging Face revision belongs to: its name without the
/// step and token count (`stage1-step140000-tokens294B` → `stage1`,
/// `step1000` → ``).
pub fn trajectory(name: &str) -> String {
    static PARTS: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = PARTS.get_or_init(|| {
        regex::Regex::new(r"(?i)(step[-_=]?\d+k?|tokens?[-_=]?\d+[kmbt]?|checkpoint[-_=]?\d+k?|ckpt[-_=]?\d+k?|iter[-_=]?\d+k?)")
            .expect("valid regex")
    });
    let stripped = re.replace_all(name, "");
    let parts: Vec<&str> = stripped.split(['-', '_', '/']).filter(|p| !p.is_empty()).collect();
    parts.join("-")
}

fn revision(name: String, dir: PathBuf) -> Revision {
    let (stage, step) = parse_revision(&name);
    Revision { name, dir, stage, step }
}

/// Whether `dir` is one revision (a `config.json` beside its weights).
pub fn is_revision(dir: &Path) -> bool {
    dir.join("config.json").is_file()
}

/// Whether `dir` is a Hugging Face cache repository folder.
pub fn is_cache_repo(dir: &Path) -> bool {
    dir.join("refs").is_dir() && dir.join("snapshots").is_dir()
}

/// Whether `path` holds Hugging Face checkpoints in any supported layout.
pub fn is_series(path: &Path) -> bool {
    path.is_dir()
        && (is_revision(path)
            || is_cache_repo(path)
            || std::fs::read_dir(path).into_iter().flatten().filter_map(|e| e.ok()).any(|e| is_revision(&e.path())))
}

/// The revisions under `path`, ordered by (stage, step, name).
pub fn discover(path: &Path) -> Result<Vec<Revision>> {
    let mut revs = if is_cache_repo(path) {
        cache_revisions(path)?
    } else if is_revision(path) {
        let name = path.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        vec![revision(name.unwrap_or_else(|| "revision".into()), path.to_path_buf())]
    } else {
        let mut v = Vec::new();
        let entries = std::fs::read_dir(path).with_context(|| format!("{}: cannot read folder", path.display()))?;
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == crate::run::ANALYSIS) || !is_revision(&p) {
                continue;
            }
            v.push(revision(e.file_name().to_string_lossy().into_owned(), p));
        }
        v
    };
    if revs.is_empty() {
        bail!("{}: no Hugging Face revisions (folders holding config.json, or a cache folder with refs/ and snapshots/)", path.display());
    }
    revs.sort_by(|a, b| (a.stage, a.step, &a.name).cmp(&(b.stage, b.step, &b.name)));
    Ok(revs)
}

/// A cache repository's revisions: every ref (`refs/step1000`, nested
/// `refs/pr/1`) naming a snapshot. A ref without a step in its name
/// (`main`) is dropped when another ref names the same commit, since it is
/// that revision again.
fn cache_revisions(repo: &Path) -> Result<Vec<Revision>> {
    let refs = repo.join("refs");
    let mut found: Vec<(String, String)> = Vec::new();
    let mut stack = vec![refs.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("{}: cannot read", dir.display()))?.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let hash = std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?.trim().to_string();
            if hash.len() != 40 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("{}: not a commit hash (expected 40 hex digits)", p.display());
            }
            let name = p.strip_prefix(&refs).unwrap_or(&p).to_string_lossy().into_owned();
            found.push((name, hash));
        }
    }
    let mut revs = Vec::new();
    for (name, hash) in &found {
        let dir = repo.join("snapshots").join(hash);
        if !dir.is_dir() {
            bail!("{}: ref '{name}' names commit {hash}, whose snapshot is not downloaded", repo.display());
        }
        let r = revision(name.clone(), dir);
        let named_elsewhere = found.iter().any(|(n, h)| h == hash && n != name && parse_revision(n).1.is_some());
        if r.step.is_none() && named_elsewhere {
            continue;
        }
        revs.push(r);
    }
    Ok(revs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_names_give_stage_and_step() {
        let cases: &[(&str, (Option<u64>, Option<u64>))] = &[
            ("step0", (None, Some(0))),
            ("step143000", (None, Some(143000))),
            ("checkpoint-500", (None, Some(500))),
            ("stage1-step140000-tokens294B", (Some(1), Some(140000))),
            ("stage2-ingredient1-step1000-tokens5B", (Some(2), Some(1000))),
            ("step-1431k", (None, Some(1_431_000))),
            ("ckpt_358", (None, Some(358))),
            ("step1000-tokens4B", (None, Some(1000))),
            ("main", (None, None)),
        ];
        for (name, want) in cases {
            assert_eq!(parse_revision(name), *want, "{name}");
        }
    }

    #[test]
    fn revisions_group_into_trajectories() {
        assert_eq!(trajectory("step1000"), "");
        assert_eq!(trajectory("checkpoint-500"), "");
        assert_eq!(trajectory("step-1431k"), "");
        assert_eq!(trajectory("ckpt_358"), "");
        assert_eq!(trajectory("step1000-tokens4B"), "");
        assert_eq!(trajectory("stage1-step140000-tokens294B"), "stage1");
        assert_eq!(trajectory("stage2-ingredient1-step1000-tokens5B"), "stage2-ingredient1");
    }
}
