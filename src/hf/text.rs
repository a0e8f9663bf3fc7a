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
}
