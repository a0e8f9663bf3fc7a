//! Hugging Face decoder-only language models (`Arch::HfCausalLm`): the
//! layout every supported `model_type` shares, with each family's own
//! tensor names, so that a checkpoint written by `transformers` loads by
//! name. Here: the architecture's fields and names and its layout; beside
//! it the forward pass (`model.rs`) and the reading of `config.json`'s
//! fields (`config.rs`). The weight files and revision series are `hf/`.
//!
//! ```text
//! x = embed(ids) (+ wpe for GPT-2)                                 stream 0
//! for each layer i:
//!     pre-norm:     x = x + attn(norm_1(x)); x = x + mlp(norm_2(x))
//!     parallel:     x = x + attn(norm_1(x)) + mlp(norm_2(x))       (GPT-NeoX)
//!     post-norm:    x = x + norm_1(attn(x)); x = x + norm_2(mlp(x)) (OLMo-2)
//!     (stream 2i + 1 = x + the attention's contribution; 2i + 2 leaves layer i;
//!      parallel: stream 2·depth + 1 + i = x + the MLP's contribution)
//!     mlp(u) = down(σ(fc(u)))  or, gated,  down(σ(gate(u)) ⊙ up(u))
//!     tap i: z = fc(u) or gate(u), a = σ(z)
//! logits = head(final_norm(x)) at every position
//! ```

pub mod config;
mod model;

pub use model::HfCausalLm;

use crate::nn::{stream_map, token_dense, AttentionDesc, ExtraInit, ExtraTensor, Frame, LayerDesc, Layout, Weights};
use serde::{Deserialize, Serialize};

/// The model families lintrace reads, by `config.json`'s `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    GptNeox,
    Gpt2,
    Llama,
    Olmo,
    Olmo2,
}

impl Family {
    pub const ALL: [Family; 5] = [Family::GptNeox, Family::Gpt2, Family::Llama, Family::Olmo, Family::Olmo2];

    /// `model_type` as `config.json` spells it.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::GptNeox => "gpt_neox",
            Family::Gpt2 => "gpt2",
            Family::Llama => "llama",
            Family::Olmo => "olmo",
            Family::Olmo2 => "olmo2",
        }
    }

    pub fn parse(model_type: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.model_type() == model_type)
    }
}

/// The normalisation layers of a family.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Norm {
    /// LayerNorm with weight and bias (GPT-NeoX, GPT-2).
    LayerNorm { eps: f64 },
    /// LayerNorm without parameters (OLMo's `OlmoLayerNorm`).
    LayerNormNoAffine { eps: f64 },
    /// RMSNorm with a weight (Llama, OLMo-2).
    RmsNorm { eps: f64 },
}

/// Where the sublayers' norms sit and how their outputs join the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Residual {
    /// x + attn(norm_1(x)), then + mlp(norm_2(·)).
    PreNorm,
    /// x + attn(norm_1(x)) + mlp(norm_2(x)): GPT-NeoX's `use_parallel_residual`.
    Parallel,
    /// x + norm_1(attn(x)), then + norm_2(mlp(·)): OLMo-2.
    PostNorm,
}

/// How positions enter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Positions {
    /// A learned position embedding of `max` rows (GPT-2's `wpe`).
    Learned { max: usize },
    /// Rotary embeddings (rotate-half) on the first `dims` dimensions of
    /// each head's queries and keys, with base `theta`.
    Rotary { theta: f64, dims: usize, max: usize },
}

/// Everything a supported Hugging Face causal LM's forward pass depends on,
/// read from its `config.json` (`hf::config`). Nothing the forward pass
/// needs is left implicit in the family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfArch {
    pub family: Family,
    /// Embedding rows (may exceed the tokenizer's vocabulary: Pythia pads
    /// 50,277 tokens to 50,304 rows).
    pub vocab: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub mlp_hidden: usize,
    pub norm: Norm,
    pub residual: Residual,
    pub positions: Positions,
    /// `down(σ(gate(u)) ⊙ up(u))` instead of `down(σ(fc(u)))`.
    pub gated: bool,
    /// Biases of the query, key, value and output projections.
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// RMSNorm of the projected queries and keys over all heads (OLMo-2).
    pub qk_norm: bool,
    /// Queries, keys and values clamped to ±clip (OLMo's `clip_qkv`).
    pub clip_qkv: Option<f64>,
    /// Attention scores also divided by (layer index + 1) (GPT-2's
    /// `scale_attn_by_inverse_layer_idx`, Stanford CRFM's runs).
    pub scale_by_inverse_layer: bool,
    /// The head shares the token embedding's weights.
    pub tied: bool,
}

/// The module names of layer `i`.
pub struct HfNames {
    /// Fused query/key/value projection (GPT-NeoX, GPT-2), else q, k, v.
    pub qkv: Vec<String>,
    pub out: String,
    pub norm_1: String,
    pub norm_2: String,
    /// OLMo-2's query and key norms.
    pub q_norm: String,
    pub k_norm: String,
    /// The layer feeding the tap: `fc`, or the gate of a gated MLP.
    pub fc: String,
    /// A gated MLP's up projection.
    pub up: String,
    pub down: String,
    pub act: String,
    pub attn: String,
    pub mlp: String,
    pub layer: String,
}

impl HfArch {
    /// The names of the embedding, position embedding, final norm and head.
    pub fn embed_name(&self) -> &'static str {
        match self.family {
            Family::GptNeox => "gpt_neox.embed_in",
            Family::Gpt2 => "transformer.wte",
            Family::Llama | Family::Olmo | Family::Olmo2 => "model.embed_tokens",
        }
    }

    pub fn position_name(&self) -> &'static str {
        "transformer.wpe"
    }

    pub fn final_norm_name(&self) -> &'static str {
        match self.family {
            Family::GptNeox => "gpt_neox.final_layer_norm",
            Family::Gpt2 => "transformer.ln_f",
            Family::Llama | Family::Olmo | Family::Olmo2 => "model.norm",
        }
    }

    pub fn head_name(&self) -> &'static str {
        match self.family {
            Family::GptNeox => "embed_out",
            _ => "lm_head",
        }
    }

    pub fn names(&self, i: usize) -> HfNames {
        match self.family {
            Family::GptNeox => {
                let p = format!("gpt_neox.layers.{i}");
                HfNames {
                    qkv: vec![format!("{p}.attention.query_key_value")],
                    out: format!("{p}.attention.dense"),
                    norm_1: format!("{p}.input_layernorm"),
                    norm_2: format!("{p}.post_attention_layernorm"),
                    q_norm: String::new(),
                    k_norm: String::new(),
                    fc: format!("{p}.mlp.dense_h_to_4h"),
                    up: String::new(),
                    down: format!("{p}.mlp.dense_4h_to_h"),
                    act: format!("{p}.mlp.act"),
                    attn: format!("{p}.attention"),
                    mlp: format!("{p}.mlp"),
                    layer: p,
                }
            }
            Family::Gpt2 => {
                let p = format!("transformer.h.{i}");
                HfNames {
                    qkv: vec![format!("{p}.attn.c_attn")],
                    out: format!("{p}.attn.c_proj"),
                    norm_1: format!("{p}.ln_1"),
                    norm_2: format!("{p}.ln_2"),
                    q_norm: String::new(),
                    k_norm: String::new(),
                    fc: format!("{p}.mlp.c_fc"),
                    up: String::new(),
                    down: format!("{p}.mlp.c_proj"),
                    act: format!("{p}.mlp.act"),
                    attn: format!("{p}.attn"),
                    mlp: format!("{p}.mlp"),
                    layer: p,
                }
            }
            Family::Llama | Family::Olmo | Family::Olmo2 => {
                let p = format!("model.layers.{i}");
                let (norm_1, norm_2) = match self.family {
                    Family::Olmo2 => (format!("{p}.post_attention_layernorm"), format!("{p}.post_feedforward_layernorm")),
                    _ => (format!("{p}.input_layernorm"), format!("{p}.post_attention_layernorm")),
                };
                HfNames {
                    qkv: ["q_proj", "k_proj", "v_proj"].iter().map(|n| format!("{p}.self_attn.{n}")).collect(),
                    out: format!("{p}.self_attn.o_proj"),
                    norm_1,
                    norm_2,
                    q_norm: format!("{p}.self_attn.q_norm"),
                    k_norm: format!("{p}.self_attn.k_norm"),
                    fc: format!("{p}.mlp.gate_proj"),
                    up: format!("{p}.mlp.up_proj"),
                    down: format!("{p}.mlp.down_proj"),
                    act: format!("{p}.mlp.act_fn"),
                    attn: format!("{p}.self_attn"),
                    mlp: format!("{p}.mlp"),
                    layer: p,
                }
            }
        }
    }

    /// Output rows of each query/key/value projection (one fused entry for
    /// GPT-NeoX and GPT-2).
    pub fn qkv_rows(&self) -> Vec<usize> {
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        match self.family {
            Family::GptNeox | Family::Gpt2 => vec![q + 2 * kv],
            _ => vec![q, kv, kv],
        }
    }

    /// Shape rules, with bounds that keep the layout's arithmetic far from
    /// overflow, for a context of `positions` tokens.
    pub fn check(&self, positions: usize) -> Result<(), String> {
        let dims = [self.vocab, self.dim, self.depth, self.heads, self.kv_heads, self.head_dim, self.mlp_hidden];
        if dims.contains(&0) {
            return Err("vocab, dim, depth, heads, kv_heads, head_dim and mlp_hidden must be positive".into());
        }
        if self.dim > 1 << 16 || self.mlp_hidden > 1 << 18 || self.depth > 1024 || self.vocab > 1 << 24 || self.heads > self.dim {
            return Err(format!(
                "model too large or odd: dim {} (at most 65536), mlp_hidden {} (at most 2^18), depth {} (at most 1024), vocab {} (at most 2^24), heads {}",
                self.dim, self.mlp_hidden, self.depth, self.vocab, self.heads
            ));
        }
        if self.heads % self.kv_heads != 0 {
            return Err(format!("{} attention heads do not share {} key/value heads evenly", self.heads, self.kv_heads));
        }
        if self.head_dim > 1 << 12 {
            return Err(format!("head_dim {} is larger than 4096", self.head_dim));
        }
        let (max, rotary) = match self.positions {
            Positions::Learned { max } => (max, None),
            Positions::Rotary { dims, max, theta } => {
                if !(theta.is_finite() && theta > 1.0) {
                    return Err(format!("rotary base {theta} must be a finite number above 1"));
                }
                (max, Some(dims))
            }
        };
        if let Some(d) = rotary {
            if d == 0 || d > self.head_dim || d % 2 != 0 {
                return Err(format!("rotary dimensions {d} must be even and between 2 and head_dim {}", self.head_dim));
            }
        }
        if positions > max {
            return Err(format!("a context of {positions} tokens is longer than the model's {max} positions"));
        }
        if matches!(self.clip_qkv, Some(c) if !(c.is_finite() && c > 0.0)) {
            return Err("clip_qkv must be a positive number".into());
        }
        let eps = match self.norm {
            Norm::LayerNorm { eps } | Norm::LayerNormNoAffine { eps } | Norm::RmsNorm { eps } => eps,
        };
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(format!("norm eps {eps} must be a finite non-negative number"));
        }
        Ok(())
    }

    /// Parameters of one norm called `name`.
    fn norm_tensors(&self, name: &str, width: usize, extras: &mut Vec<ExtraTensor>) {
        let push = |extras: &mut Vec<ExtraTensor>, t: &str, init| {
            extras.push(ExtraTensor { name: format!("{name}.{t}"), shape: vec![width], init, embedding: false })
        };
        match self.norm {
            Norm::LayerNorm { .. } => {
                push(extras, "weight", ExtraInit::Ones);
                push(extras, "bias", ExtraInit::Zeros);
            }
            Norm::RmsNorm { .. } => push(extras, "weight", ExtraInit::Ones),
            Norm::LayerNormNoAffine { .. } => {}
        }
    }

    pub fn model(&self, frame: &Frame, w: &mut Weights) -> anyhow::Result<HfCausalLm> {
        HfCausalLm::new(self, frame, w)
    }
}

impl crate::arch::ArchSpec for HfArch {
    fn num_taps(&self) -> usize {
        self.depth
    }

    /// A language model over windows of `input_shape` [context] tokens.
    fn validate(&self, frame: &Frame) -> Result<(), String> {
        if frame.input_shape.len() != 1 {
            return Err(format!("a language model needs input_shape [context], got {:?}", frame.input_shape));
        }
        self.check(frame.input_shape[0])?;
        if frame.num_classes != self.vocab {
            return Err(format!("a language model predicts tokens: num_classes must be vocab ({} ≠ {})", frame.num_classes, self.vocab));
        }
        Ok(())
    }

    /// Every layer, tap, tensor, sublayer and attention layer at a context
    /// of `input_shape[0]` tokens.
    fn layout(&self, frame: &Frame) -> Layout {
        let t = frame.input_shape[0];
        let dense = |name: String, out: usize, inp: usize, bias: bool| token_dense(name, out, inp, bias, t);
        let mut l = Layout::empty();
        let (dim, hidden) = (self.dim, self.mlp_hidden);
        l.extras.push(ExtraTensor {
            name: format!("{}.weight", self.embed_name()),
            shape: vec![self.vocab, dim],
            init: ExtraInit::Embedding,
            embedding: true,
        });
        if let Positions::Learned { max } = self.positions {
            l.extras.push(ExtraTensor {
                name: format!("{}.weight", self.position_name()),
                shape: vec![max, dim],
                init: ExtraInit::Embedding,
                embedding: true,
            });
        }
        for i in 0..self.depth {
            let n = self.names(i);
            self.norm_tensors(&n.norm_1, dim, &mut l.extras);
            for (name, rows) in n.qkv.iter().zip(self.qkv_rows()) {
                l.layers.push(dense(name.clone(), rows, dim, self.attention_bias));
            }
            if self.qk_norm {
                self.norm_tensors(&n.q_norm, self.heads * self.head_dim, &mut l.extras);
                self.norm_tensors(&n.k_norm, self.kv_heads * self.head_dim, &mut l.extras);
            }
            l.layers.push(dense(n.out.clone(), dim, self.heads * self.head_dim, self.attention_bias));
            self.norm_tensors(&n.norm_2, dim, &mut l.extras);
            let index = l.push_tap(frame, dense(n.fc.clone(), hidden, dim, self.mlp_bias), n.fc.clone(), n.act.clone(), vec![t, hidden]);
            if self.gated {
                l.layers.push(dense(n.up.clone(), hidden, dim, self.mlp_bias));
            }
            l.layers.push(dense(n.down.clone(), dim, hidden, self.mlp_bias));
            l.attention.push(AttentionDesc { name: n.attn.clone(), heads: self.heads, positions: t, causal: true, tap: index });
            let sub = |name: String, kind: &'static str, from: usize, to: usize| stream_map(name, kind, index, [t, dim], (from, to));
            l.blocks.push(sub(n.attn, "attention_sublayer", 2 * i, 2 * i + 1));
            // With a parallel residual both sublayers read the layer's input
            // X: the MLP sublayer maps X to X + mlp(norm_2(X)), a stream the
            // model never forms, recorded after the others (2·depth + 1 + i).
            let mlp_streams = match self.residual {
                Residual::Parallel => (2 * i, 2 * self.depth + 1 + i),
                _ => (2 * i + 1, 2 * i + 2),
            };
            l.blocks.push(sub(n.mlp, "mlp_sublayer", mlp_streams.0, mlp_streams.1));
            l.blocks.push(sub(n.layer, "transformer_block", 2 * i, 2 * i + 2));
        }
        self.norm_tensors(self.final_norm_name(), dim, &mut l.extras);
        if !self.tied {
            l.layers.push(LayerDesc { in_shape: vec![dim], ..dense(self.head_name().into(), self.vocab, dim, false) });
        }
        l
    }
}
