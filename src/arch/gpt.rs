//! A decoder-only transformer in nanoGPT's layout and names: token and
//! position embeddings (`transformer.wte`, `.wpe`), `depth` pre-LayerNorm
//! blocks with causal self-attention (`transformer.h.N`; see
//! `transformer.rs`), a final LayerNorm (`transformer.ln_f`) and `lm_head`
//! (or the token embedding, `tied`). The input is a window of token ids
//! (`input_shape` [T]). With `layer_norm: false` the LayerNorms are left
//! out (the one-layer modular-addition model of Nanda et al., 2023).
//! LayerNorm eps 1e-5.

use super::transformer::{BlockNames, Embed, Shape, Transformer};
use crate::nn::{ExtraInit, ExtraTensor, Frame, Layout, Weights};
use anyhow::Result;
use serde::{Deserialize, Serialize};

fn yes() -> bool {
    true
}

/// `{"kind": "gpt", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptSpec {
    pub vocab: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_hidden: usize,
    #[serde(default = "yes")]
    pub layer_norm: bool,
    /// Biases in the linear layers and LayerNorms (nanoGPT's `bias`).
    #[serde(default = "yes")]
    pub bias: bool,
    /// `lm_head` shares the token embedding's weights (GPT-2).
    #[serde(default)]
    pub tied: bool,
    /// Dropout on embeddings, attention weights and sublayer outputs
    /// (training only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// A language model: next-token logits at every position (one
    /// prediction per (window, position), `num_classes` = `vocab`), as
    /// nanoGPT trains. Otherwise the last position classifies the window.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lm: bool,
}

/// The presets of this file, with `lintrace-train --model NAME`'s names:
/// a window classifier (modular addition) and nanoGPT's character models.
pub const CLASSIFIER_PRESETS: &[&str] = &["modadd"];
pub const LM_PRESETS: &[&str] = &["gpt-char-small", "gpt-char-tiny"];

/// nanoGPT's names of block `i`.
pub fn block_names(i: usize) -> BlockNames {
    BlockNames::under(format!("transformer.h.{i}"), ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"])
}

impl GptSpec {
    /// - `modadd`: Nanda et al.'s (2023) modular-addition model: one block,
    ///   dim 128, 4 heads, MLP 512, no LayerNorm, untied unembedding.
    /// - `gpt-char-small`: nanoGPT's `shakespeare_char` model: 6 blocks, dim
    ///   384, 6 heads, MLP 1536, no biases, tied `lm_head`, next-token
    ///   prediction at every position of a 256-token window;
    ///   `gpt-char-tiny`: 2 blocks, dim 64, 2 heads, MLP 256, 64 tokens
    ///   (CPU-sized, for tests).
    ///
    /// The vocabulary comes from the data.
    pub fn preset(name: &str, vocab: usize) -> Option<GptSpec> {
        let gpt = |dim, depth, heads, mlp_hidden, lm: bool| GptSpec {
            vocab,
            dim,
            depth,
            heads,
            mlp_hidden,
            layer_norm: lm,
            bias: !lm,
            tied: lm,
            dropout: None,
            lm,
        };
        match name {
            "modadd" => Some(gpt(128, 1, 4, 512, false)),
            "gpt-char-small" => Some(gpt(384, 6, 6, 1536, true)),
            "gpt-char-tiny" => Some(gpt(64, 2, 2, 256, true)),
            _ => None,
        }
    }

    /// The window a language-model preset trains on: nanoGPT's 256 tokens,
    /// 64 for the CPU-sized model.
    pub fn preset_context(name: &str) -> Option<usize> {
        match name {
            "gpt-char-small" => Some(256),
            "gpt-char-tiny" => Some(64),
            _ => None,
        }
    }

    pub fn shape(&self) -> Shape {
        Shape {
            dim: self.dim,
            depth: self.depth,
            heads: self.heads,
            mlp_hidden: self.mlp_hidden,
            bias: self.bias,
            layer_norm: self.layer_norm,
            eps: 1e-5,
            dropout: self.dropout,
            causal: true,
            lm: self.lm,
        }
    }

    pub fn model(&self, frame: &Frame, w: &mut Weights) -> Result<Transformer> {
        let (t, dim) = (frame.input_shape[0], self.dim);
        let embed =
            Embed::Tokens { wte: w.take("transformer.wte.weight", &[self.vocab, dim])?, wpe: w.take("transformer.wpe.weight", &[t, dim])? };
        let head = (!self.tied).then_some(("lm_head", false));
        Transformer::new(&self.shape(), frame, block_names, embed, "transformer.ln_f", head, w)
    }
}

impl super::ArchSpec for GptSpec {
    fn num_taps(&self) -> usize {
        self.depth
    }

    fn validate(&self, frame: &Frame) -> Result<(), String> {
        self.shape().validate()?;
        let (vocab, classes) = (self.vocab, frame.num_classes);
        if self.lm && classes != vocab {
            return Err(format!("a language model predicts tokens: num_classes must be vocab ({classes} ≠ {vocab})"));
        }
        if frame.input_shape.len() != 1 || frame.input_shape[0] > 1 << 16 {
            return Err(format!("a gpt needs input_shape [context] with context at most 65536, got {:?}", frame.input_shape));
        }
        if !(2..=1 << 24).contains(&vocab) {
            return Err(format!("gpt vocab must be between 2 and 2^24, got {vocab}"));
        }
        if self.tied && classes != vocab {
            return Err(format!("a tied lm_head needs num_classes = vocab ({classes} ≠ {vocab})"));
        }
        Ok(())
    }

    fn layout(&self, frame: &Frame) -> Layout {
        let (shape, t, dim) = (self.shape(), frame.input_shape[0], self.dim);
        let mut l = Layout::empty();
        let embedding = |name: &str, rows: usize| ExtraTensor {
            name: name.into(),
            shape: vec![rows, dim],
            init: ExtraInit::Embedding,
            embedding: true,
        };
        l.extras.push(embedding("transformer.wte.weight", self.vocab));
        l.extras.push(embedding("transformer.wpe.weight", t));
        shape.blocks_layout(&mut l, frame, t, block_names);
        shape.norm(&mut l.extras, "transformer.ln_f");
        if !self.tied {
            // nanoGPT's lm_head has no bias.
            l.layers.push(shape.head("lm_head", frame.num_classes, false));
        }
        l
    }
}
