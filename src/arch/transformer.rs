//! The pre-LayerNorm transformer blocks that the ViT (`vit.rs`, timm's
//! names) and the GPT (`gpt.rs`, nanoGPT's) share, written out plainly as
//! nanoGPT and timm write them; each of those files gives its embedding,
//! names and head:
//!
//! ```text
//! x = embed(input)                                  stream 0
//! for each block i:
//!     x = x + proj(attention(ln_1(x)))              stream 2i + 1
//!     z = fc(ln_2(x))                               tap i (z, a = σ(z))
//!     x = x + fc_proj(a)                            stream 2i + 2
//! logits = head(ln_f(x)[readout position])          (every position: a GPT LM)
//! ```
//!
//! Everything is composed from differentiable candle operations: candle
//! 0.11's fused softmax and LayerNorm have no backward pass (candle issue
//! #3569), so softmax is `candle_nn::ops::softmax` and LayerNorm is
//! written out; `tests/it/models/transformer.rs` checks the gradients against finite
//! differences.

use crate::nn::{
    dropout, ops, stream_map, token_dense, Activation, AttentionDesc, ExtraInit, ExtraTensor, Frame, LayerDesc, Layout, Start, Taps,
    Weights,
};
use anyhow::Result;
use candle_core::{Tensor, D};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The module names of block `i` (each architecture's own).
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

impl BlockNames {
    /// The names of the block at module path `block`, whose modules are
    /// `leaves` = [ln_1, qkv, proj, ln_2, fc, fc_proj] below it; the
    /// attention is `<block>.attn`, the MLP `<block>.mlp` and its activation
    /// `<block>.mlp.act` in both namings.
    pub fn under(block: String, leaves: [&str; 6]) -> BlockNames {
        let at = |leaf: &str| format!("{block}.{leaf}");
        BlockNames {
            ln_1: at(leaves[0]),
            qkv: at(leaves[1]),
            proj: at(leaves[2]),
            ln_2: at(leaves[3]),
            fc: at(leaves[4]),
            act: at("mlp.act"),
            fc_proj: at(leaves[5]),
            attn: at("attn"),
            mlp: at("mlp"),
            block,
        }
    }
}

/// The sizes and switches of the blocks.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_hidden: usize,
    /// Biases in the linear layers and LayerNorms.
    pub bias: bool,
    pub layer_norm: bool,
    pub eps: f64,
    pub dropout: Option<f64>,
    pub causal: bool,
    /// Logits at every position (a language model).
    pub lm: bool,
}

impl Shape {
    /// Shape rules, with bounds that keep the walk's arithmetic far from
    /// overflow (the size guard checks real sizes).
    pub fn validate(&self) -> Result<(), String> {
        let Shape { dim, depth, heads, mlp_hidden, dropout, .. } = *self;
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
        Ok(())
    }

    /// A LayerNorm's tensors (none without LayerNorms).
    pub fn norm(&self, extras: &mut Vec<ExtraTensor>, name: &str) {
        if self.layer_norm {
            extras.push(ExtraTensor { name: format!("{name}.weight"), shape: vec![self.dim], init: ExtraInit::Ones, embedding: false });
            if self.bias {
                extras.push(ExtraTensor { name: format!("{name}.bias"), shape: vec![self.dim], init: ExtraInit::Zeros, embedding: false });
            }
        }
    }

    /// The blocks' layers, taps, attention layers and sublayers over `t`
    /// positions, appended to `l`.
    pub fn blocks_layout(&self, l: &mut Layout, frame: &Frame, t: usize, names: impl Fn(usize) -> BlockNames) {
        let (dim, mlp_hidden) = (self.dim, self.mlp_hidden);
        let dense = |name: String, out: usize, inp: usize| token_dense(name, out, inp, self.bias, t);
        for i in 0..self.depth {
            let n = names(i);
            self.norm(&mut l.extras, &n.ln_1);
            l.layers.push(dense(n.qkv.clone(), 3 * dim, dim));
            l.layers.push(dense(n.proj.clone(), dim, dim));
            self.norm(&mut l.extras, &n.ln_2);
            let index = l.push_tap(frame, dense(n.fc.clone(), mlp_hidden, dim), n.fc.clone(), n.act.clone(), vec![t, mlp_hidden]);
            l.layers.push(dense(n.fc_proj.clone(), dim, mlp_hidden));
            l.attention.push(AttentionDesc { name: n.attn.clone(), heads: self.heads, positions: t, causal: self.causal, tap: index });
            // Residual streams: 2i before block i, 2i + 1 after its attention, 2i + 2 after its MLP.
            let sub = |name: String, kind: &'static str, from: usize, to: usize| stream_map(name, kind, index, [t, dim], (from, to));
            l.blocks.push(sub(n.attn, "attention_sublayer", 2 * i, 2 * i + 1));
            l.blocks.push(sub(n.mlp, "mlp_sublayer", 2 * i + 1, 2 * i + 2));
            l.blocks.push(sub(n.block, "transformer_block", 2 * i, 2 * i + 2));
        }
    }

    /// The output layer [classes, dim] read at one position per prediction.
    pub fn head(&self, name: &str, classes: usize, bias: bool) -> LayerDesc {
        LayerDesc { in_shape: vec![self.dim], bias, ..token_dense(name.into(), classes, self.dim, bias, 1) }
    }
}

/// y = x Wᵀ + b over the last dimension, W [out, in] (`torch.nn.Linear`).
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(w: &mut Weights, name: &str, out: usize, inp: usize, bias: bool) -> Result<Self> {
        Ok(Linear {
            weight: w.take(&format!("{name}.weight"), &[out, inp])?,
            bias: bias.then(|| w.take(&format!("{name}.bias"), &[out])).transpose()?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (inp, out) = (dims[dims.len() - 1], self.weight.dims()[0]);
        let y = x.reshape(((), inp))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut shape = dims[..dims.len() - 1].to_vec();
        shape.push(out);
        Ok(y.reshape(shape)?)
    }
}

/// LayerNorm over the last dimension (biased variance, as PyTorch).
struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    fn new(w: &mut Weights, name: &str, dim: usize, bias: bool, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: w.take(&format!("{name}.weight"), &[dim])?,
            bias: bias.then(|| w.take(&format!("{name}.bias"), &[dim])).transpose()?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::norm_differentiable(x, Some(&self.weight), self.bias.as_ref(), self.eps, false)?)
    }
}

fn norm(n: &Option<LayerNorm>, x: &Tensor) -> Result<Tensor> {
    match n {
        Some(n) => n.forward(x),
        None => Ok(x.clone()),
    }
}

/// One pre-LayerNorm block.
struct Block {
    ln_1: Option<LayerNorm>,
    qkv: Linear,
    proj: Linear,
    ln_2: Option<LayerNorm>,
    fc: Linear,
    fc_proj: Linear,
    act: Activation,
}

/// How the input becomes the first residual stream.
pub enum Embed {
    /// timm: patches (a `patch`-strided convolution, written as a matrix
    /// product over flattened patches), class token, position embedding.
    Patches { weight: Tensor, bias: Tensor, patch: usize, cls: Tensor, pos: Tensor },
    /// nanoGPT: token embedding plus position embedding.
    Tokens { wte: Tensor, wpe: Tensor },
}

pub struct Transformer {
    embed: Embed,
    blocks: Vec<Block>,
    ln_f: Option<LayerNorm>,
    /// `None`: tied to the token embedding.
    head: Option<Linear>,
    heads: usize,
    causal: bool,
    /// Logits at every position (a GPT language model).
    lm: bool,
    leaky_slope: f64,
    dropout: Option<f64>,
    dropout_key: AtomicU64,
    training: AtomicBool,
}

impl Transformer {
    /// The blocks, final norm and head of `shape` around `embed`, with the
    /// block names `names` gives; `head` is the output layer's (name, bias),
    /// `None` when tied to the token embedding.
    pub fn new(
        shape: &Shape,
        frame: &Frame,
        names: impl Fn(usize) -> BlockNames,
        embed: Embed,
        final_norm: &str,
        head: Option<(&str, bool)>,
        w: &mut Weights,
    ) -> Result<Self> {
        let Shape { dim, depth, heads, mlp_hidden, bias, layer_norm, eps, dropout, causal, lm } = *shape;
        let ln = |w: &mut Weights, name: &str| layer_norm.then(|| LayerNorm::new(w, name, dim, bias, eps)).transpose();
        let mut blocks = Vec::with_capacity(depth);
        for i in 0..depth {
            let n = names(i);
            blocks.push(Block {
                ln_1: ln(w, &n.ln_1)?,
                qkv: Linear::new(w, &n.qkv, 3 * dim, dim, bias)?,
                proj: Linear::new(w, &n.proj, dim, dim, bias)?,
                ln_2: ln(w, &n.ln_2)?,
                fc: Linear::new(w, &n.fc, mlp_hidden, dim, bias)?,
                fc_proj: Linear::new(w, &n.fc_proj, dim, mlp_hidden, bias)?,
                act: frame.activation(i),
            });
        }
        let ln_f = ln(w, final_norm)?;
        let head = head.map(|(name, bias)| Linear::new(w, name, frame.num_classes, dim, bias)).transpose()?;
        Ok(Transformer {
            embed,
            blocks,
            ln_f,
            head,
            heads,
            causal,
            lm,
            leaky_slope: frame.leaky_relu_slope,
            dropout: dropout.filter(|&p| p > 0.0),
            dropout_key: AtomicU64::new(0),
            training: AtomicBool::new(false),
        })
    }

    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed);
    }

    pub fn set_dropout_key(&self, key: u64) {
        self.dropout_key.store(key, Ordering::Relaxed);
    }

    /// Dropout at site `slot` (0: embedding; 3i + 1, 3i + 2, 3i + 3: block
    /// i's attention weights, attention output and MLP output).
    fn drop(&self, slot: usize, x: Tensor) -> Result<Tensor> {
        match self.dropout.filter(|_| self.training.load(Ordering::Relaxed)) {
            Some(p) => dropout(&x, p, self.dropout_key.load(Ordering::Relaxed), slot),
            None => Ok(x),
        }
    }

    /// The first residual stream [batch, positions, dim].
    fn embed(&self, x: &Tensor) -> Result<Tensor> {
        match &self.embed {
            Embed::Patches { weight, bias, patch, cls, pos } => {
                let (b, c, h, w) = x.dims4()?;
                let (gh, gw, p) = (h / patch, w / patch, *patch);
                // [b, c, gh, p, gw, p] → [b, gh, gw, c, p, p]: one row per patch,
                // in the conv kernel's (channel, row, column) order.
                let rows = x.reshape((b, c, gh, p, gw, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((b, gh * gw, c * p * p))?;
                let tokens = rows.broadcast_matmul(&weight.t()?)?.broadcast_add(bias)?;
                let cls = cls.broadcast_as((b, 1, cls.dims()[2]))?;
                Ok(Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(pos)?)
            }
            Embed::Tokens { wte, wpe } => {
                let (b, t) = x.dims2()?;
                let ids = x.to_dtype(candle_core::DType::U32)?.flatten_all()?;
                let tok = wte.index_select(&ids, 0)?.reshape((b, t, wte.dims()[1]))?;
                self.drop(0, tok.broadcast_add(wpe)?)
            }
        }
    }

    /// Multi-head self-attention of `h` [b, t, d]: the projected output and
    /// the attention weights [b, heads, t, t].
    fn attention(&self, i: usize, blk: &Block, h: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t, d) = h.dims3()?;
        let hd = d / self.heads;
        let qkv = blk.qkv.forward(h)?.reshape((b, t, 3, self.heads, hd))?.permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (qkv.get(0)?.contiguous()?, qkv.get(1)?.contiguous()?, qkv.get(2)?.contiguous()?);
        let mut scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        if self.causal {
            // Keys after the query get a score whose exponential is exactly 0.
            let mask: Vec<f32> = (0..t * t).map(|ij| if ij % t > ij / t { -1e30 } else { 0.0 }).collect();
            scores = scores.broadcast_add(&Tensor::from_vec(mask, (t, t), h.device())?)?;
        }
        let att = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let y = self.drop(3 * i + 1, att.clone())?.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        Ok((blk.proj.forward(&y)?, att))
    }

    /// From `start` to the logits. Resuming at tap `l` takes its z and the
    /// residual stream entering block l's MLP (`start.skip()`).
    pub fn forward(&self, start: Start<'_>, taps: &mut Taps) -> Result<Tensor> {
        let mut x = start.input().map(|inp| self.embed(inp)).transpose()?;
        if let Some(x0) = &x {
            taps.stream(x0);
        }
        for (i, blk) in self.blocks.iter().enumerate() {
            if start.skips(i) {
                continue;
            }
            let (mid, input, z) = match start.z_at(i) {
                Some(z) => {
                    let mid = start.skip().ok_or_else(|| anyhow::anyhow!("resuming a transformer at tap {i} needs its residual stream"))?;
                    (mid.clone(), None, z.clone())
                }
                None => {
                    let x_in = x.as_ref().expect("a pass has a stream from its start on");
                    let (att_out, att) = self.attention(i, blk, &norm(&blk.ln_1, x_in)?)?;
                    taps.attention(&att);
                    let mid = (x_in + self.drop(3 * i + 2, att_out)?)?;
                    taps.stream(&mid);
                    let u = norm(&blk.ln_2, &mid)?;
                    let z = blk.fc.forward(&u)?;
                    (mid, Some(u), z)
                }
            };
            taps.set_skip(Some(mid.clone()));
            let a = taps.apply(i, blk.act, self.leaky_slope, input.as_ref(), &z)?;
            taps.set_skip(None);
            let out = (&mid + self.drop(3 * i + 3, blk.fc_proj.forward(&a)?)?)?;
            taps.stream(&out);
            x = Some(out);
        }
        let x = norm(&self.ln_f, x.as_ref().expect("a pass has a stream from its start on"))?;
        // ViT reads the class token (position 0); a GPT classifying its window
        // reads the last position; a language model reads every position,
        // one row per (window, position).
        let (b, t, d) = x.dims3()?;
        let read = match self.embed {
            Embed::Patches { .. } => x.narrow(1, 0, 1)?.squeeze(1)?,
            Embed::Tokens { .. } if self.lm => x.reshape((b * t, d))?,
            Embed::Tokens { .. } => x.narrow(1, t - 1, 1)?.squeeze(1)?,
        };
        Ok(match (&self.head, &self.embed) {
            (Some(head), _) => head.forward(&read)?,
            (None, Embed::Tokens { wte, .. }) => read.matmul(&wte.t()?)?,
            (None, Embed::Patches { .. }) => unreachable!("a ViT has a head"),
        })
    }
}
