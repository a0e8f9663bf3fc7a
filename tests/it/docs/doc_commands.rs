//! The docs say what the code does: every command line quoted in a shell
//! block of README.md or docs/**/*.md that runs a lintrace binary parses
//! with that binary's argument parser, every example file quoted in the docs
//! is the file in the repository, and every relative link points at a file
//! that exists.
//!
//! Parsing without doing any work: the binaries exit right after parsing
//! their command line when `LINTRACE_PARSE_ONLY` is set. `lintrace-query`
//! belongs to another package, so it is run from the target folder when it
//! has been built there (`cargo test --workspace` builds it); otherwise its
//! commands are skipped, and the test says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every Markdown file under docs/.
fn doc_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut files = vec![repo().join("README.md")];
    walk(&repo().join("docs"), &mut files);
    files.sort();
    files
}

/// A fenced code block: its language, the line of its opening fence
/// (1-based), its text, and the last non-empty line before it.
struct Block {
    lang: String,
    line: usize,
    text: String,
    before: String,
}

fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize, usize, String)> = None; // lang, line, indent, before
    let mut text = String::new();
    let mut last = String::new();
    for (i, raw) in md.lines().enumerate() {
        let indent = raw.len() - raw.trim_start().len();
        let t = raw.trim_start();
        match &open {
            None if t.starts_with("```") => {
                open = Some((t.trim_start_matches('`').trim().to_string(), i + 1, indent, last.clone()));
                text.clear();
            }
            None => {
                if !t.is_empty() {
                    last = t.to_string();
                }
            }
            Some((lang, line, ind, before)) => {
                if t.starts_with("```") {
                    out.push(Block { lang: lang.clone(), line: *line, text: std::mem::take(&mut text), before: before.clone() });
                    open = None;
                    last.clear();
                } else {
                    // Drop the fence's own indentation (blocks inside list items).
                    let cut = raw.char_indices().take_while(|(j, c)| *j < *ind && c.is_whitespace()).count();
                    text.push_str(&raw[cut..]);
                    text.push('\n');
                }
            }
        }
    }
    out
}

/// Splits shell text into simple commands (words), the way sh would for
/// the subset the docs use: quotes (a double-quoted string may span lines),
/// backslash escapes and line continuations, comments, and the operators
/// `&&`, `||`, `;`, `|` and newlines between commands. Redirections
/// (`> file`) are dropped.
fn shell_commands(text: &str) -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut redirect = false;
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let end_word = |word: &mut String, in_word: &mut bool, words: &mut Vec<String>, redirect: &mut bool| {
        if *in_word {
            if *redirect {
                *redirect = false; // the redirection's target is not an argument
            } else {
                words.push(std::mem::take(word));
            }
            word.clear();
            *in_word = false;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() && chars[i + 1] == '\n' => i += 1, // continuation
            '\\' if i + 1 < chars.len() => {
                word.push(chars[i + 1]);
                in_word = true;
                i += 1;
            }
            '\'' => {
                in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    word.push(chars[i]);
                    i += 1;
                }
            }
            '"' => {
                in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() && "\"\\$`".contains(chars[i + 1]) {
                        i += 1;
                    }
                    word.push(chars[i]);
                    i += 1;
                }
            }
            '#' if !in_word => {
                while i + 1 < chars.len() && chars[i + 1] != '\n' {
                    i += 1;
                }
            }
            ' ' | '\t' => end_word(&mut word, &mut in_word, &mut words, &mut redirect),
            '>' | '<' => {
                end_word(&mut word, &mut in_word, &mut words, &mut redirect);
                while i + 1 < chars.len() && chars[i + 1] == '>' {
                    i += 1;
                }
                redirect = true;
            }
            '\n' | ';' | '&' | '|' => {
                end_word(&mut word, &mut in_word, &mut words, &mut redirect);
                if !words.is_empty() {
                    cmds.push(std::mem::take(&mut words));
                }
            }
            _ => {
                word.push(c);
                in_word = true;
            }
        }
        i += 1;
    }
    end_word(&mut word, &mut in_word, &mut words, &mut redirect);
    if !words.is_empty() {
        cmds.push(words);
    }
    cmds
}

const BINARIES: [&str; 4] = ["lintrace-train", "lintrace-analyze", "lintrace-query", "lintrace-bench"];

/// The binary and arguments a command line runs, if it runs one of
/// lintrace's: `lintrace-X ARGS`, `cargo run … --bin lintrace-X -- ARGS` or
/// `cargo run … -p lintrace-query -- ARGS`. Leading `VAR=value` words are
/// the environment and are skipped.
fn lintrace_command(words: &[String]) -> Option<(String, Vec<String>)> {
    let words: Vec<&String> = words.iter().skip_while(|w| w.contains('=') && !w.starts_with('-')).collect();
    let first = words.first()?;
    if let Some(bin) = BINARIES.iter().find(|b| first.as_str() == **b) {
        return Some((bin.to_string(), words[1..].iter().map(|s| s.to_string()).collect()));
    }
    if first.as_str() == "cargo" && words.get(1).is_some_and(|w| w.as_str() == "run") {
        let dash = words.iter().position(|w| w.as_str() == "--");
        let cargo_args = &words[..dash.unwrap_or(words.len())];
        let value =
            |flag: &str| cargo_args.iter().position(|w| w.as_str() == flag).and_then(|i| cargo_args.get(i + 1)).map(|s| s.to_string());
        let bin = value("--bin").or_else(|| value("-p").filter(|p| p == "lintrace-query")).or_else(|| value("--package"))?;
        let args = dash.map(|d| words[d + 1..].iter().map(|s| s.to_string()).collect()).unwrap_or_default();
        return Some((bin, args));
    }
    None
}

fn bin_path(bin: &str) -> PathBuf {
    match bin {
        "lintrace-train" => PathBuf::from(env!("CARGO_BIN_EXE_lintrace-train")),
        "lintrace-analyze" => PathBuf::from(env!("CARGO_BIN_EXE_lintrace-analyze")),
        "lintrace-bench" => PathBuf::from(env!("CARGO_BIN_EXE_lintrace-bench")),
        // Another package: built beside the others by `cargo test --workspace`.
        _ => Path::new(env!("CARGO_BIN_EXE_lintrace-analyze")).with_file_name(format!("lintrace-query{}", std::env::consts::EXE_SUFFIX)),
    }
}

#[test]
fn shell_commands_split_as_sh_would() {
    let cmds = shell_commands(
        "A=1 lintrace-train --x 'a b' \\\n    --y \"c \\\"d\\\"\nmore\" > out.toml # note\ncargo run -- --z && lintrace-analyze runs/ | tee log\n",
    );
    assert_eq!(
        cmds,
        vec![
            vec!["A=1", "lintrace-train", "--x", "a b", "--y", "c \"d\"\nmore"],
            vec!["cargo", "run", "--", "--z"],
            vec!["lintrace-analyze", "runs/"],
            vec!["tee", "log"],
        ]
    );
    let w = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        lintrace_command(&w(&["cargo", "run", "--release", "--bin", "lintrace-train", "--", "--steps", "3"])),
        Some(("lintrace-train".to_string(), w(&["--steps", "3"])))
    );
    assert_eq!(
        lintrace_command(&w(&["cargo", "run", "--release", "-p", "lintrace-query", "--", "report", "r"])),
        Some(("lintrace-query".to_string(), w(&["report", "r"])))
    );
    assert_eq!(lintrace_command(&w(&["python3", "x.py"])), None);
}

#[test]
fn every_documented_command_line_parses() {
    let tmp = tempfile::tempdir().unwrap();
    let query_built = bin_path("lintrace-query").is_file();
    let (mut checked, mut skipped) = (0usize, 0usize);
    let mut failures = Vec::new();
    let mut per_binary: BTreeMap<String, usize> = BTreeMap::new();
    for file in doc_files() {
        let md = std::fs::read_to_string(&file).unwrap();
        let rel = file.strip_prefix(repo()).unwrap().display().to_string();
        for b in blocks(&md).iter().filter(|b| matches!(b.lang.as_str(), "sh" | "bash" | "shell" | "console")) {
            for words in shell_commands(&b.text) {
                let Some((bin, args)) = lintrace_command(&words) else { continue };
                assert!(BINARIES.contains(&bin.as_str()), "{rel}:{}: cargo runs an unknown binary '{bin}'", b.line);
                let needs_query = bin == "lintrace-query"
                    || (bin == "lintrace-analyze" && args.first().is_some_and(|a| ["query", "plot", "report"].contains(&a.as_str())));
                if needs_query && !query_built {
                    skipped += 1;
                    continue;
                }
                let out = Command::new(bin_path(&bin))
                    .args(&args)
                    .env("LINTRACE_PARSE_ONLY", "1")
                    .current_dir(tmp.path())
                    .stdin(Stdio::null())
                    .output()
                    .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
                checked += 1;
                *per_binary.entry(bin.clone()).or_default() += 1;
                if !out.status.success() {
                    failures.push(format!(
                        "{rel}:{} (block): {bin} {}\n  {}",
                        b.line,
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            }
        }
    }
    if skipped > 0 {
        println!(
            "note: {skipped} documented lintrace-query command lines not checked: {} is not built (`cargo test --workspace` builds it)",
            bin_path("lintrace-query").display()
        );
    }
    println!("checked {checked} documented command lines: {per_binary:?}");
    assert!(failures.is_empty(), "documented command lines that do not parse:\n{}", failures.join("\n"));
    assert!(per_binary.get("lintrace-train").is_some_and(|n| *n >= 3), "the docs quote lintrace-train commands: {per_binary:?}");
    assert!(per_binary.get("lintrace-analyze").is_some_and(|n| *n >= 3), "the docs quote lintrace-analyze commands: {per_binary:?}");
}

/// A TOML block whose preceding line names an `examples/….toml` file quotes
/// that file, byte for byte.
#[test]
fn every_quoted_example_file_is_the_file_in_the_repository() {
    let mut quoted = 0;
    for file in doc_files() {
        let md = std::fs::read_to_string(&file).unwrap();
        let rel = file.strip_prefix(repo()).unwrap().display().to_string();
        for b in blocks(&md).iter().filter(|b| b.lang == "toml") {
            let Some(start) = b.before.find("examples/") else { continue };
            let name: String = b.before[start..].chars().take_while(|c| !matches!(c, '`' | ' ' | ')' | ':' | ',' | '\'')).collect();
            if !name.ends_with(".toml") {
                continue;
            }
            let path = repo().join(&name);
            let actual =
                std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}:{}: quotes {name}, which cannot be read: {e}", b.line));
            assert_eq!(b.text.trim_end(), actual.trim_end(), "{rel}:{}: the quoted {name} differs from the file", b.line);
            quoted += 1;
        }
    }
    assert!(quoted >= 1, "the docs quote at least one example file (examples/sweeps/lr-seed.toml)");
}

/// GitHub's anchor for a heading: lower case, letters, digits, `-` and `_`
/// kept, spaces to `-`, everything else dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in md.lines() {
        let t = line.trim_start();
        if t.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && t.starts_with('#') {
            out.push(slug(t.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(
        slug(" `mu`: agreement with a surrogate, after Kalimeris et al. (2019)"),
        "mu-agreement-with-a-surrogate-after-kalimeris-et-al-2019"
    );
    assert_eq!(slug(" Sequence models (transformers)"), "sequence-models-transformers");
}

/// Relative links between the docs point at files that exist, and at
/// headings that exist in them.
#[test]
fn every_relative_link_points_at_a_file() {
    let mut bad = Vec::new();
    for file in doc_files()
        .into_iter()
        .chain(["BENCHMARKS.md", "scripts/gpu/README.md", "examples/README.md", "examples/recipes/README.md"].map(|f| repo().join(f)))
    {
        let md = std::fs::read_to_string(&file).unwrap();
        let rel = file.strip_prefix(repo()).unwrap().display().to_string();
        let mut rest = md.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(j) = rest.find(')') else { break };
            let target = &rest[..j];
            let path = target.split('#').next().unwrap_or("");
            if target.is_empty() || path.contains("://") || path.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            let linked = if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
            if !linked.exists() {
                bad.push(format!("{rel}: ({target}): no such file"));
            } else if let Some((_, anchor)) = target.split_once('#') {
                let text = if linked.is_file() { std::fs::read_to_string(&linked).unwrap_or_default() } else { String::new() };
                if linked.extension().is_some_and(|x| x == "md") && !anchors(&text).iter().any(|a| a == anchor) {
                    bad.push(format!("{rel}: ({target}): no such heading"));
                }
            }
        }
    }
    assert!(bad.is_empty(), "links to files that do not exist:\n{}", bad.join("\n"));
}
