//! The module graph of every crate points one way: no file's imports lead
//! back to it (docs/architecture.md). A cycle means a misplaced piece: move
//! it into a leaf both sides can import.

use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`spec`, `arch::hf`) → source text, comments removed, for
/// the crate rooted at `src` (`skip`: folders that are other crates or
/// binaries).
fn modules(src: &Path, skip: &[&str]) -> BTreeMap<String, String> {
    let comment = Regex::new(r"//[^\n]*").unwrap();
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(src).unwrap().to_string_lossy().into_owned();
            if skip.iter().any(|s| rel == *s) {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if rel.ends_with(".rs") {
                let mut parts: Vec<&str> = rel.trim_end_matches(".rs").split('/').collect();
                if matches!(parts.last(), Some(&("mod" | "lib" | "main"))) {
                    parts.pop();
                }
                let text = std::fs::read_to_string(&path).unwrap();
                out.insert(parts.join("::"), comment.replace_all(&text, "").into_owned());
            }
        }
    }
    out
}

/// The paths a use tree names, from its text after `crate::` or `super::`
/// (`a::b`, `{a::B, c::{D, e}}`, `a::{self, B}`), up to where it ends.
fn expand(text: &str) -> Vec<String> {
    fn tree(s: &[u8], i: &mut usize, prefix: &str, out: &mut Vec<String>) {
        let mut path = prefix.to_string();
        loop {
            let start = *i;
            while *i < s.len() && (s[*i].is_ascii_alphanumeric() || s[*i] == b'_') {
                *i += 1;
            }
            let ident = std::str::from_utf8(&s[start..*i]).unwrap_or("");
            if !ident.is_empty() && ident != "self" {
                path = if path.is_empty() { ident.to_string() } else { format!("{path}::{ident}") };
            }
            if s[*i..].starts_with(b"::{") {
                *i += 3;
                loop {
                    while *i < s.len() && s[*i].is_ascii_whitespace() {
                        *i += 1;
                    }
                    if *i >= s.len() || s[*i] == b'}' {
                        *i += 1;
                        break;
                    }
                    tree(s, i, &path, out);
                    // Skip `as name`, then the comma.
                    while *i < s.len() && s[*i] != b',' && s[*i] != b'}' {
                        *i += 1;
                    }
                    if *i < s.len() && s[*i] == b',' {
                        *i += 1;
                    }
                }
                return;
            }
            if s[*i..].starts_with(b"::") && s.get(*i + 2).is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_') {
                *i += 2;
                continue;
            }
            out.push(path);
            return;
        }
    }
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    if bytes.starts_with(b"{") {
        // `crate::{...}`: a tree with an empty prefix.
        let wrapped = format!("x::{text}");
        let mut j = 0;
        let mut inner = Vec::new();
        tree(wrapped.as_bytes(), &mut j, "", &mut inner);
        return inner
            .into_iter()
            .map(|p| p.trim_start_matches("x").trim_start_matches("::").to_string())
            .filter(|p| !p.is_empty())
            .collect();
    }
    tree(bytes, &mut i, "", &mut out);
    out
}

/// Edges from each module to the modules it names (`crate::a::b`,
/// `crate::{a::B, c}`, `super::x`), each resolved to its longest prefix
/// that is a module; a module's own submodules do not count.
fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let resolve = |path: &str| -> Option<String> {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len()).rev().map(|i| parts[..i].join("::")).find(|m| mods.contains_key(m))
    };
    let mut out: BTreeMap<String, BTreeSet<String>> = mods.keys().map(|m| (m.clone(), BTreeSet::new())).collect();
    for (m, text) in mods {
        let parent: Vec<&str> = {
            let parts: Vec<&str> = m.split("::").collect();
            parts[..parts.len().saturating_sub(1)].to_vec()
        };
        let mut targets = Vec::new();
        for (at, _) in text.match_indices("crate::") {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            targets.extend(expand(&text[at + "crate::".len()..]));
        }
        for (at, _) in text.match_indices("super::") {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            for p in expand(&text[at + "super::".len()..]) {
                targets.push(parent.iter().map(|s| s.to_string()).chain(std::iter::once(p)).collect::<Vec<_>>().join("::"));
            }
        }
        for t in targets {
            if let Some(t) = resolve(&t) {
                if t != *m && !t.starts_with(&format!("{m}::")) && !m.starts_with(&format!("{t}::")) {
                    out.get_mut(m).unwrap().insert(t);
                }
            }
        }
    }
    out
}

/// The cycles (strongly connected components of more than one module).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: finish order on the graph, then components on the reverse.
    fn visit<'a>(v: &'a str, g: &'a BTreeMap<String, BTreeSet<String>>, seen: &mut BTreeSet<&'a str>, order: &mut Vec<&'a str>) {
        if seen.insert(v) {
            for w in &g[v] {
                visit(w, g, seen, order);
            }
            order.push(v);
        }
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for v in edges.keys() {
        visit(v, edges, &mut seen, &mut order);
    }
    let mut reverse: BTreeMap<String, BTreeSet<String>> = edges.keys().map(|k| (k.clone(), BTreeSet::new())).collect();
    for (v, ws) in edges {
        for w in ws {
            reverse.get_mut(w).unwrap().insert(v.clone());
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for v in order.into_iter().rev() {
        let mut comp = Vec::new();
        visit(v, &reverse, &mut seen, &mut comp);
        if comp.len() > 1 {
            out.push(comp.into_iter().map(String::from).collect());
        }
    }
    out
}

/// The graph with every module folded into its top-level module.
fn top_level(edges: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (v, ws) in edges {
        let entry = out.entry(top(v)).or_default();
        entry.extend(ws.iter().map(|w| top(w)).filter(|w| *w != top(v)));
    }
    for ws in out.clone().values() {
        for w in ws {
            out.entry(w.clone()).or_default();
        }
    }
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn no_crate_has_an_import_cycle() {
    let crates: [(&str, PathBuf, &[&str]); 4] = [
        ("lintrace", root().join("src"), &["bin", "query", "core"]),
        ("lintrace-core", root().join("src/core/src"), &[]),
        ("lintrace-query", root().join("src/query/src"), &["bin"]),
        ("lintrace-analyzers", root().join("analyzers/src"), &[]),
    ];
    for (name, src, skip) in crates {
        let mods = modules(&src, skip);
        assert!(mods.len() > 3, "{name}: found only {} modules under {}", mods.len(), src.display());
        let graph = edges(&mods);
        assert_eq!(cycles(&graph), Vec::<Vec<String>>::new(), "{name}: modules importing each other");
        assert_eq!(cycles(&top_level(&graph)), Vec::<Vec<String>>::new(), "{name}: top-level modules importing each other");
    }
}

#[test]
fn the_checker_finds_a_cycle() {
    // A check that cannot fail proves nothing: two files that import each
    // other, and a cycle through a parent's items, are found.
    let mods: BTreeMap<String, String> = [
        ("a".to_string(), "use crate::b::X;".to_string()),
        ("b".to_string(), "use crate::{c, a::{self, Y as Z}};".to_string()),
        ("c".to_string(), String::new()),
        ("d".to_string(), "mod e;".to_string()),
        ("d::e".to_string(), "use super::f::Z;".to_string()),
        ("d::f".to_string(), "use crate::d::e::W;".to_string()),
    ]
    .into_iter()
    .collect();
    let found = cycles(&edges(&mods));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.iter().any(|c| c.contains(&"a".to_string()) && c.contains(&"b".to_string())));
    assert!(found.iter().any(|c| c.contains(&"d::e".to_string()) && c.contains(&"d::f".to_string())));
    assert_eq!(expand("{c, a::{self, Y as Z}, e::F};"), ["c", "a", "a::Y", "e::F"]);
    assert_eq!(expand("spec::Arch::Gpt(ref g)"), ["spec::Arch::Gpt"]);
}
