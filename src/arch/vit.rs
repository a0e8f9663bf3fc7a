//! A vision transformer (Dosovitskiy et al., 2021) in timm's
//! `VisionTransformer` layout and names: a `patch`×`patch` convolution with
//! that stride (`patch_embed.proj`), a class token, a learned position
//! embedding, `depth` pre-LayerNorm blocks (`blocks.i`: multi-head
//! self-attention, then an MLP whose nonlinearity is the block's tap; see
//! `transformer.rs`), a final LayerNorm (`norm`) and a linear `head` on the
//! class token. LayerNorm eps 1e-6 (timm's), biases everywhere.

use super::transformer::{BlockNames, Embed, Shape, Transformer};
use crate::nn::{ExtraInit, ExtraTensor, Frame, LayerDesc, Layout, Weights};
use analyzers::LayerKind;
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// `{"kind": "vit", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitSpec {
    pub patch: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_hidden: usize,
    /// Dropout on attention weights and sublayer outputs (training only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
}

/// The presets of this file, with `lintrace-train --model NAME`'s names.
pub const PRESETS: &[&str] = &["vit-tiny", "vit-mini"];

/// timm's names of block `i`.
pub fn block_names(i: usize) -> BlockNames {
    BlockNames::under(format!("blocks.{i}"), ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"])
}

impl VitSpec {
    /// `vit-tiny`: patch 4, dim 192, 6 blocks, 3 heads, MLP 384 (the
    /// CIFAR-10 ViT); `vit-mini`: patch 4, dim 64, 4 blocks, 2 heads, MLP
    /// 128 (CPU-sized).
    pub fn preset(name: &str) -> Option<VitSpec> {
        let vit = |patch, dim, depth, heads, mlp_hidden| VitSpec { patch, dim, depth, heads, mlp_hidden, dropout: None };
        match name {
            "vit-tiny" => Some(vit(4, 192, 6, 3, 384)),
            "vit-mini" => Some(vit(4, 64, 4, 2, 128)),
            _ => None,
        }
    }

    pub fn shape(&self) -> Shape {
        Shape {
            dim: self.dim,
            depth: self.depth,
            heads: self.heads,
            mlp_hidden: self.mlp_hidden,
            bias: true,
            layer_norm: true,
            eps: 1e-6,
            dropout: self.dropout,
            causal: false,
            lm: false,
        }
    }

    /// The patches plus the class token.
    pub fn positions(&self, frame: &Frame) -> usize {
        (frame.input_shape[1] / self.patch) * (frame.input_shape[2] / self.patch) + 1
    }

    pub fn model(&self, frame: &Frame, w: &mut Weights) -> Result<Transformer> {
        let (t, dim, patch, c) = (self.positions(frame), self.dim, self.patch, frame.input_shape[0]);
        let embed = Embed::Patches {
            weight: w.take("patch_embed.proj.weight", &[dim, c, patch, patch])?.reshape((dim, c * patch * patch))?,
            bias: w.take("patch_embed.proj.bias", &[dim])?,
            patch,
            cls: w.take("cls_token", &[1, 1, dim])?,
            pos: w.take("pos_embed", &[1, t, dim])?,
        };
        Transformer::new(&self.shape(), frame, block_names, embed, "norm", Some(("head", true)), w)
    }
}

impl super::ArchSpec for VitSpec {
    fn num_taps(&self) -> usize {
        self.depth
    }

    fn validate(&self, frame: &Frame) -> Result<(), String> {
        self.shape().validate()?;
        let patch = self.patch;
        if frame.input_shape.len() != 3 {
            return Err(format!("a vit needs input_shape [channels, height, width], got {:?}", frame.input_shape));
        }
        let (h, w) = (frame.input_shape[1], frame.input_shape[2]);
        if patch == 0 || h % patch != 0 || w % patch != 0 {
            return Err(format!("vit patch {patch} must divide the {h}×{w} input"));
        }
        if (h / patch) * (w / patch) > 1 << 16 {
            return Err(format!("vit with {} patches: at most 65536", (h / patch) * (w / patch)));
        }
        Ok(())
    }

    fn layout(&self, frame: &Frame) -> Layout {
        let (shape, t, dim, patch) = (self.shape(), self.positions(frame), self.dim, self.patch);
        let mut l = Layout::empty();
        l.layers.push(LayerDesc {
            name: "patch_embed.proj".into(),
            kind: LayerKind::Conv2d,
            weight_shape: vec![dim, frame.input_shape[0], patch, patch],
            tap: None,
            bias: true,
            stride: patch,
            padding: 0,
            norm: None,
            in_shape: frame.input_shape.clone(),
        });
        // timm: cls_token N(0, 1e-6), pos_embed trunc_normal(0.02).
        l.extras.push(ExtraTensor { name: "cls_token".into(), shape: vec![1, 1, dim], init: ExtraInit::Normal(1e-6), embedding: true });
        l.extras.push(ExtraTensor { name: "pos_embed".into(), shape: vec![1, t, dim], init: ExtraInit::Normal(0.02), embedding: true });
        shape.blocks_layout(&mut l, frame, t, block_names);
        shape.norm(&mut l.extras, "norm");
        l.layers.push(shape.head("head", frame.num_classes, true));
        l
    }
}
