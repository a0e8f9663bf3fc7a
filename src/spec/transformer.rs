//! The layout of the transformers: every tensor, affine layer, tap,
//! attention layer and sublayer, with nanoGPT's names (`Arch::Gpt`) or
//! timm's `VisionTransformer` names (`Arch::Vit`), so that a PyTorch
//! checkpoint of either kind loads by name.

use super::{Arch, LayerDesc, ModelSpec, ResidualBlockDesc, TapDesc};
use analyzers::LayerKind;

/// How a tensor that is not an affine layer's weight or bias starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExtraInit {
    /// LayerNorm weight.
    Ones,
    /// LayerNorm bias.
    Zeros,
    /// A GPT's token and position embeddings: `nn.Embedding`'s N(0, 1)
    /// under the `pytorch` scheme, N(0, 0.02²) under `gpt2`.
    Embedding,
    /// timm's class token (std 1e-6) and position embedding (0.02):
    /// normal with this standard deviation under every scheme.
    Normal(f64),
}

/// A tensor of the model that is not an affine layer's weight or bias.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: ExtraInit,
    /// Embeddings (token, position, class token): AdamW does not decay them.
    pub embedding: bool,
}

/// One multi-head self-attention layer, for the attention analyzers.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionDesc {
    /// e.g. `blocks.0.attn`; rows are named `<name>.head<h>`.
    pub name: String,
    pub heads: usize,
    /// Sequence length (queries = keys).
    pub positions: usize,
    pub causal: bool,
    /// The MLP tap of the same block (the rows' `tap`).
    pub tap: usize,
}

/// Everything the transformer's walk yields.
pub(super) struct Layout {
    pub layers: Vec<LayerDesc>,
    pub taps: Vec<TapDesc>,
    pub extras: Vec<ExtraTensor>,
    pub sublayers: Vec<ResidualBlockDesc>,
    pub attention: Vec<AttentionDesc>,
}

/// A dense layer applied at each of `t` positions, [out, in] weight.
pub(super) fn token_dense(name: String, out: usize, inp: usize, bias: bool, t: usize) -> LayerDesc {
    LayerDesc {
        name,
        kind: LayerKind::Dense,
        weight_shape: vec![out, inp],
        tap: None,
        bias,
        stride: 1,
        padding: 0,
        norm: None,
        in_shape: vec![t, inp],
    }
}

/// A sublayer or block of a transformer as a map from residual stream
/// `streams.0` to `streams.1`, each `[positions, dim]`, at tap `tap`'s block.
pub(super) fn stream_map(name: String, kind: &'static str, tap: usize, shape: [usize; 2], streams: (usize, usize)) -> ResidualBlockDesc {
    ResidualBlockDesc {
        name,
        kind,
        first_tap: tap,
        last_tap: tap,
        in_shape: shape.to_vec(),
        out_shape: shape.to_vec(),
        stride: 1,
        receptive_field: 1,
        identity_shortcut: true,
        streams: Some(streams),
    }
}

/// The module names of block `i` in either naming.
pub struct BlockNames {
    pub ln_1: String,
    pub qkv: String,
    pub proj: String,
    pub ln_2: String,
    pub fc: String,
    pub act: String,
    pub fc_proj: String,
    pub attn: String,
    pub mlp: String,
    pub block: String,
}

pub fn block_names(arch: &Arch, i: usize) -> BlockNames {
    match arch {
        Arch::Vit { .. } => BlockNames {
            ln_1: format!("blocks.{i}.norm1"),
            qkv: format!("blocks.{i}.attn.qkv"),
            proj: format!("blocks.{i}.attn.proj"),
            ln_2: format!("blocks.{i}.norm2"),
            fc: format!("blocks.{i}.mlp.fc1"),
            act: format!("blocks.{i}.mlp.act"),
            fc_proj: format!("blocks.{i}.mlp.fc2"),
            attn: format!("blocks.{i}.attn"),
            mlp: format!("blocks.{i}.mlp"),
            block: format!("blocks.{i}"),
        },
        _ => BlockNames {
            ln_1: format!("transformer.h.{i}.ln_1"),
            qkv: format!("transformer.h.{i}.attn.c_attn"),
            proj: format!("transformer.h.{i}.attn.c_proj"),
            ln_2: format!("transformer.h.{i}.ln_2"),
            fc: format!("transformer.h.{i}.mlp.c_fc"),
            act: format!("transformer.h.{i}.mlp.act"),
            fc_proj: format!("transformer.h.{i}.mlp.c_proj"),
            attn: format!("transformer.h.{i}.attn"),
            mlp: format!("transformer.h.{i}.mlp"),
            block: format!("transformer.h.{i}"),
        },
    }
}

impl ModelSpec {
    /// Sequence length the blocks see: tokens of a GPT's window, or the
    /// patches of a ViT plus its class token.
    pub fn positions(&self) -> usize {
        match &self.arch {
            Arch::Vit { patch, .. } => (self.input_shape[1] / patch) * (self.input_shape[2] / patch) + 1,
            Arch::Gpt { .. } | Arch::HfCausalLm(_) => self.input_shape[0],
            _ => 0,
        }
    }

    /// Shape rules of a transformer spec, with bounds that keep the walk's
    /// arithmetic far from overflow (the size guard checks real sizes).
    pub(super) fn validate_transformer(&self) -> Result<(), String> {
        let (dim, depth, heads, mlp_hidden, dropout) = match &self.arch {
            Arch::Vit { dim, depth, heads, mlp_hidden, dropout, .. } | Arch::Gpt { dim, depth, heads, mlp_hidden, dropout, .. } => {
                (*dim, *depth, *heads, *mlp_hidden, *dropout)
            }
            _ => return Ok(()),
        };
        if [dim, depth, heads, mlp_hidden].contains(&0) {
            return Err("transformer dim, depth, heads and mlp_hidden must be positive".into());
        }
        if dim > 1 << 20 || mlp_hidden > 1 << 22 || depth > 4096 || heads > dim {
            return Err(format!("transformer too large or odd: dim {dim} (at most 2^20), mlp_hidden {mlp_hidden} (at most 2^22), depth {depth} (at most 4096), heads {heads} (at most dim)"));
        }
        if dim % heads != 0 {
            return Err(format!("dim {dim} is not divisible by heads {heads}"));
        }
        if matches!(dropout, Some(p) if !(0.0..1.0).contains(&p)) {
            return Err("dropout must be in [0, 1)".into());
        }
        match &self.arch {
            Arch::Vit { patch, .. } => {
                if self.input_shape.len() != 3 {
                    return Err(format!("a vit needs input_shape [channels, height, width], got {:?}", self.input_shape));
                }
                let (h, w) = (self.input_shape[1], self.input_shape[2]);
                if *patch == 0 || h % patch != 0 || w % patch != 0 {
                    return Err(format!("vit patch {patch} must divide the {h}×{w} input"));
                }
                if (h / patch) * (w / patch) > 1 << 16 {
                    return Err(format!("vit with {} patches: at most 65536", (h / patch) * (w / patch)));
                }
            }
            Arch::Gpt { vocab, tied, lm, .. } => {
                if *lm && self.num_classes != *vocab {
                    return Err(format!("a language model predicts tokens: num_classes must be vocab ({} ≠ {vocab})", self.num_classes));
                }
                if self.input_shape.len() != 1 || self.input_shape[0] > 1 << 16 {
                    return Err(format!("a gpt needs input_shape [context] with context at most 65536, got {:?}", self.input_shape));
                }
                if *vocab < 2 || *vocab > 1 << 24 {
                    return Err(format!("gpt vocab must be between 2 and 2^24, got {vocab}"));
                }
                if *tied && self.num_classes != *vocab {
                    return Err(format!("a tied lm_head needs num_classes = vocab ({} ≠ {vocab})", self.num_classes));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Inputs a model can take: a GPT's are token ids (whole numbers in
    /// `0..vocab`); anything else takes any finite value.
    pub fn check_inputs(&self, x: &[f32]) -> Result<(), String> {
        let vocab = match &self.arch {
            Arch::Gpt { vocab, .. } => Some(vocab),
            Arch::HfCausalLm(hf) => Some(&hf.vocab),
            _ => None,
        };
        if let Some(vocab) = vocab {
            if let Some(bad) = x.iter().find(|v| !(v.fract() == 0.0 && **v >= 0.0 && (**v as usize) < *vocab)) {
                return Err(format!("input {bad} is not a token id in 0..{vocab}"));
            }
        }
        Ok(())
    }

    pub(super) fn transformer_layout(&self) -> Layout {
        if let Arch::HfCausalLm(hf) = &self.arch {
            return hf.layout(self.positions(), |l| self.tap_activation(l));
        }
        let (dim, depth, mlp_hidden, bias, layer_norm) = match &self.arch {
            Arch::Vit { dim, depth, mlp_hidden, .. } => (*dim, *depth, *mlp_hidden, true, true),
            Arch::Gpt { dim, depth, mlp_hidden, bias, layer_norm, .. } => (*dim, *depth, *mlp_hidden, *bias, *layer_norm),
            _ => return Layout { layers: vec![], taps: vec![], extras: vec![], sublayers: vec![], attention: vec![] },
        };
        let t = self.positions();
        let heads = match &self.arch {
            Arch::Vit { heads, .. } | Arch::Gpt { heads, .. } => *heads,
            _ => 1,
        };
        let dense = |name: String, out: usize, inp: usize| token_dense(name, out, inp, bias, t);
        let norm = |extras: &mut Vec<ExtraTensor>, name: &str| {
            if layer_norm {
                extras.push(ExtraTensor { name: format!("{name}.weight"), shape: vec![dim], init: ExtraInit::Ones, embedding: false });
                if bias {
                    extras.push(ExtraTensor { name: format!("{name}.bias"), shape: vec![dim], init: ExtraInit::Zeros, embedding: false });
                }
            }
        };
        let mut l = Layout { layers: vec![], taps: vec![], extras: vec![], sublayers: vec![], attention: vec![] };
        match &self.arch {
            Arch::Vit { patch, .. } => {
                let c = self.input_shape[0];
                l.layers.push(LayerDesc {
                    name: "patch_embed.proj".into(),
                    kind: LayerKind::Conv2d,
                    weight_shape: vec![dim, c, *patch, *patch],
                    tap: None,
                    bias: true,
                    stride: *patch,
                    padding: 0,
                    norm: None,
                    in_shape: self.input_shape.clone(),
                });
                // timm: cls_token N(0, 1e-6), pos_embed trunc_normal(0.02).
                l.extras.push(ExtraTensor {
                    name: "cls_token".into(),
                    shape: vec![1, 1, dim],
                    init: ExtraInit::Normal(1e-6),
                    embedding: true,
                });
                l.extras.push(ExtraTensor {
                    name: "pos_embed".into(),
                    shape: vec![1, t, dim],
                    init: ExtraInit::Normal(0.02),
                    embedding: true,
                });
            }
            Arch::Gpt { vocab, .. } => {
                l.extras.push(ExtraTensor {
                    name: "transformer.wte.weight".into(),
                    shape: vec![*vocab, dim],
                    init: ExtraInit::Embedding,
                    embedding: true,
                });
                l.extras.push(ExtraTensor {
                    name: "transformer.wpe.weight".into(),
                    shape: vec![t, dim],
                    init: ExtraInit::Embedding,
                    embedding: true,
                });
            }
            _ => unreachable!(),
        }
        let causal = matches!(self.arch, Arch::Gpt { .. });
        for i in 0..depth {
            let n = block_names(&self.arch, i);
            norm(&mut l.extras, &n.ln_1);
            l.layers.push(dense(n.qkv.clone(), 3 * dim, dim));
            l.layers.push(dense(n.proj.clone(), dim, dim));
            norm(&mut l.extras, &n.ln_2);
            let index = l.taps.len();
            l.taps.push(TapDesc {
                index,
                layer_name: n.fc.clone(),
                module_name: n.act.clone(),
                layer_kind: LayerKind::Dense,
                activation: self.tap_activation(index),
                shape: vec![t, mlp_hidden],
            });
            l.layers.push(LayerDesc { tap: Some(index), ..dense(n.fc.clone(), mlp_hidden, dim) });
            l.layers.push(dense(n.fc_proj.clone(), dim, mlp_hidden));
            l.attention.push(AttentionDesc { name: n.attn.clone(), heads, positions: t, causal, tap: index });
            // Residual streams: 2i before block i, 2i + 1 after its attention, 2i + 2 after its MLP.
            let sub = |name: String, kind: &'static str, from: usize, to: usize| stream_map(name, kind, index, [t, dim], (from, to));
            l.sublayers.push(sub(n.attn, "attention_sublayer", 2 * i, 2 * i + 1));
            l.sublayers.push(sub(n.mlp, "mlp_sublayer", 2 * i + 1, 2 * i + 2));
            l.sublayers.push(sub(n.block, "transformer_block", 2 * i, 2 * i + 2));
        }
        match &self.arch {
            Arch::Vit { .. } => {
                norm(&mut l.extras, "norm");
                l.layers.push(LayerDesc { in_shape: vec![dim], bias: true, ..dense("head".into(), self.num_classes, dim) });
            }
            Arch::Gpt { tied, .. } => {
                norm(&mut l.extras, "transformer.ln_f");
                if !tied {
                    // nanoGPT's lm_head has no bias.
                    l.layers.push(LayerDesc { in_shape: vec![dim], bias: false, ..dense("lm_head".into(), self.num_classes, dim) });
                }
            }
            _ => unreachable!(),
        }
        l
    }
}
