//! Hugging Face causal language models read from their own files: the
//! architecture from each revision's `config.json` (`config`), the weights
//! from its safetensors or torch files (`load`), a series of revisions from
//! revision folders or the hub cache (`series`), and a probe of token
//! windows from text with the model's own tokenizer (`text`). The layout
//! and names, the forward pass and `config.json`'s fields are `arch/hf/`.

pub mod config;
pub mod load;
pub mod series;
pub mod text;
