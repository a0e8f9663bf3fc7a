//! A probe of token windows from plain text, tokenized with the model's own
//! `tokenizer.json` (the `tokenizers` crate, as `transformers`' fast
//! tokenizers do). The windows are saved as the analysis' probe file, so
//! every revision and every later re-analysis sees the same tokens.

use crate::probe::{content_hash, Probe};
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;

/// The token ids of `text_path` under the tokenizer at `tokenizer_path`,
/// checked against a model embedding of `vocab` rows.
pub fn tokenize(text_path: &Path, tokenizer_path: &Path, vocab: usize) -> Result<Vec<u32>> {
    let tokenizer = tokenizers::Tokenizer::from_file(tokenizer_path)
        .map_err(|e| anyhow!("{}: not a readable tokenizer.json ({e})", tokenizer_path.display()))?;
    let size = tokenizer.get_vocab_size(true);
    if size > vocab {
        bail!(
            "{}: the tokenizer has {size} tokens but the model's embedding has {vocab} rows: not this model's tokenizer",
            tokenizer_path.display()
        );
    }
    let bytes = std::fs::read(text_path).with_context(|| format!("{}: cannot read", text_path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| anyhow!("{}: not UTF-8 text ({e})", text_path.display()))?;
    let enc = tokenizer.encode(text.as_str(), false).map_err(|e| anyhow!("{}: cannot tokenize ({e})", text_path.display()))?;
    let ids = enc.get_ids().to_vec();
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        bail!("{}: token id {bad} is outside the model's {vocab} embedding rows", tokenizer_path.display());
    }
    Ok(ids)
}

/// `windows` windows of `context` tokens, spread evenly over the
/// non-overlapping windows the text holds; labels are the next tokens.
pub fn windows(ids: &[u32], context: usize, windows: usize, source: &str) -> Result<Probe> {
    if context == 0 || windows == 0 {
        bail!("--context and --probe-size must be positive");
    }
    // Each window needs one token beyond it: the last position's label.
    let available = ids.len().saturating_sub(1) / context;
    if available < windows {
        bail!(
            "{source}: {} tokens hold {available} windows of {context} (+1) tokens, but the probe asks for {windows}: give more text or a smaller --probe-size/--context",
            ids.len()
        );
    }
    let mut inputs = Vec::with_capacity(windows * context);
    let mut labels = Vec::with_capacity(windows * context);
    let mut indices = Vec::with_capacity(windows);
    for k in 0..windows {
        let start = (k * available / windows) * context;
        inputs.extend(ids[start..start + context].iter().map(|&i| i as f32));
        labels.extend(ids[start + 1..start + context + 1].iter().map(|&i| i as i64));
        indices.push(start as i64);
    }
    Ok(Probe {
        hash: content_hash(&inputs, &labels),
        inputs,
        sample_shape: vec![context],
        labels,
        indices,
        dataset: format!("text:{source}"),
        split: "probe".into(),
    })
}

/// The bigram surrogate of a language model, for `mu`: for each token, the
/// next token seen most often after it in the text outside the probe's
/// windows (ties: the smaller id), and for a token never seen there the
/// text's most frequent token. Counted sparsely; stored as one id per
/// embedding row.
#[derive(Debug, Clone, PartialEq)]
pub struct Bigram {
    pub next: Vec<u32>,
    /// Bigrams counted.
    pub counted: u64,
    /// How often `next` was right on the bigrams it was counted on.
    pub train_accuracy: f64,
}

pub const BIGRAM_FILE: &str = "bigram.safetensors";

impl Bigram {
    /// Counts the bigrams of `ids` that do not touch a token of the probe
    /// windows (each `(start, len)` covers `len + 1` tokens: its inputs and
    /// the last label).
    pub fn count(ids: &[u32], windows: &[(usize, usize)], vocab: usize) -> Result<Bigram> {
        let mut held = vec![false; ids.len()];
        for &(start, len) in windows {
            for h in held.iter_mut().skip(start).take(len + 1) {
                *h = true;
            }
        }
        let mut pairs: std::collections::HashMap<(u32, u32), u64> = std::collections::HashMap::new();
        let mut unigram: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
        let mut counted = 0u64;
        for i in 0..ids.len().saturating_sub(1) {
            if held[i] || held[i + 1] {
                continue;
            }
            *pairs.entry((ids[i], ids[i + 1])).or_default() += 1;
            *unigram.entry(ids[i + 1]).or_default() += 1;
            counted += 1;
        }
        if counted == 0 {
            bail!("the text has no tokens outside the probe's windows to count a bigram surrogate on");
        }
        let top = |m: &std::collections::HashMap<u32, u64>| m.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|(&t, _)| t);
        let fallback = top(&unigram).unwrap_or(0);
        let mut best: Vec<Option<(u64, u32)>> = vec![None; vocab];
        for (&(a, b), &n) in &pairs {
            let slot = &mut best[a as usize];
            if slot.is_none_or(|(m, t)| n > m || (n == m && b < t)) {
                *slot = Some((n, b));
            }
        }
        let right: u64 = best.iter().flatten().map(|(n, _)| n).sum();
        Ok(Bigram {
            next: best.iter().map(|b| b.map_or(fallback, |(_, t)| t)).collect(),
            counted,
            train_accuracy: right as f64 / counted as f64,
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes: Vec<u8> = self.next.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::U32, vec![self.next.len()], &bytes)?;
        let md = std::collections::HashMap::from([
            ("format".to_string(), "lintrace.bigram".to_string()),
            ("counted".to_string(), self.counted.to_string()),
            ("train_accuracy".to_string(), format!("{:.17}", self.train_accuracy)),
        ]);
        let out = safetensors::serialize(vec![("next", view)], Some(md))?;
        crate::atomic::write_atomic(path, &out)
    }

    pub fn load(path: &Path) -> Result<Bigram> {
        let inner = || -> Result<Bigram> {
            let bytes = std::fs::read(path).context("cannot read")?;
            let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("not a valid safetensors file ({e})"))?;
            let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("not a valid safetensors file ({e})"))?;
            let md = header.metadata().clone().unwrap_or_default();
            let next = st.tensor("next").map_err(|_| anyhow!("tensor 'next' is missing"))?;
            if next.dtype() != safetensors::Dtype::U32 {
                bail!("tensor 'next' must be uint32");
            }
            let field = |k: &str| md.get(k).and_then(|v| v.parse::<f64>().ok()).ok_or_else(|| anyhow!("metadata '{k}' is missing"));
            Ok(Bigram {
                next: next.data().chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                counted: field("counted")? as u64,
                train_accuracy: field("train_accuracy")?,
            })
        };
        inner().with_context(|| format!("{}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_spread_and_shifted() {
        let ids: Vec<u32> = (0..100).collect();
        let p = windows(&ids, 10, 3, "t").unwrap();
        assert_eq!(p.indices, vec![0, 30, 60]);
        assert_eq!(&p.inputs[10..13], &[30.0, 31.0, 32.0]);
        assert_eq!(&p.labels[10..13], &[31, 32, 33]);
        assert_eq!(p.labels.len(), 30);
        assert!(windows(&ids, 10, 10, "t").unwrap_err().to_string().contains("hold 9 windows"));
    }

    #[test]
    fn the_bigram_counts_outside_the_probe() {
        // 1 → 2 twice outside the window, 1 → 3 three times inside it.
        let ids = [1, 2, 0, 1, 2, 0, 1, 3, 1, 3, 1, 3, 0];
        let b = Bigram::count(&ids, &[(6, 5)], 5).unwrap();
        assert_eq!(b.next[1], 2);
        assert_eq!(b.next[2], 0);
        // Never seen first: the most frequent next token (0 and 2 tie at
        // 2 each among counted bigrams' targets; the smaller id wins).
        assert_eq!(b.next[4], 0);
        assert_eq!(b.counted, 5);
        assert!((b.train_accuracy - 1.0).abs() < 1e-12, "{}", b.train_accuracy);
    }
}
