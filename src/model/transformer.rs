//! Transformers, written out plainly as nanoGPT and timm write them: a
//! vision transformer (`Arch::Vit`, timm's `VisionTransformer`) and a
//! decoder-only GPT (`Arch::Gpt`, nanoGPT's `GPT`). Both are pre-LayerNorm:
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

use super::{dropout, Start, Taps, Weights};
use crate::spec::{block_names, Activation, Arch, ModelSpec};
use anyhow::Result;
use candle_core::{Tensor, D};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// y = x Wᵀ + b over the last dimension, W [out, in] (`torch.nn.Linear`).
pub(super) struct Linear {
    pub(super) weight: Tensor,
    pub(super) bias: Option<Tensor>,
}

impl Linear {
    pub(super) fn new(w: &mut Weights, name: &str, out: usize, inp: usize, bias: bool) -> Result<Self> {
        Ok(Linear {
            weight: w.take(&format!("{name}.weight"), &[out, inp])?,
            bias: bias.then(|| w.take(&format!("{name}.bias"), &[out])).transpose()?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
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
        let y = standardize(x, self.eps)?.broadcast_mul(&self.weight)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// (x − mean) / sqrt(var + eps) over the last dimension (biased variance,
/// as PyTorch's LayerNorm), before any weight or bias.
pub(super) fn standardize(x: &Tensor, eps: f64) -> Result<Tensor> {
    let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(xc.broadcast_div(&(var + eps)?.sqrt()?)?)
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
enum Embed {
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
    /// Logits at every position (`Arch::Gpt { lm: true }`).
    lm: bool,
    leaky_slope: f64,
    dropout: Option<f64>,
    dropout_key: AtomicU64,
    training: AtomicBool,
}

impl Transformer {
    pub fn new(spec: &ModelSpec, w: &mut Weights) -> Result<Self> {
        let (dim, depth, heads, mlp_hidden, bias, layer_norm, eps, drop) = match &spec.arch {
            Arch::Vit { dim, depth, heads, mlp_hidden, dropout, .. } => (*dim, *depth, *heads, *mlp_hidden, true, true, 1e-6, *dropout),
            Arch::Gpt { dim, depth, heads, mlp_hidden, bias, layer_norm, dropout, .. } => {
                (*dim, *depth, *heads, *mlp_hidden, *bias, *layer_norm, 1e-5, *dropout)
            }
            _ => unreachable!("Transformer::new on a spec that is not a transformer"),
        };
        let t = spec.positions();
        let ln = |w: &mut Weights, name: &str| layer_norm.then(|| LayerNorm::new(w, name, dim, bias, eps)).transpose();
        let embed = match &spec.arch {
            Arch::Vit { patch, .. } => {
                let c = spec.input_shape[0];
                Embed::Patches {
                    weight: w.take("patch_embed.proj.weight", &[dim, c, *patch, *patch])?.reshape((dim, c * patch * patch))?,
                    bias: w.take("patch_embed.proj.bias", &[dim])?,
                    patch: *patch,
                    cls: w.take("cls_token", &[1, 1, dim])?,
                    pos: w.take("pos_embed", &[1, t, dim])?,
                }
            }
            Arch::Gpt { vocab, .. } => {
                Embed::Tokens { wte: w.take("transformer.wte.weight", &[*vocab, dim])?, wpe: w.take("transformer.wpe.weight", &[t, dim])? }
            }
            _ => unreachable!(),
        };
        let mut blocks = Vec::with_capacity(depth);
        for i in 0..depth {
            let n = block_names(&spec.arch, i);
            blocks.push(Block {
                ln_1: ln(w, &n.ln_1)?,
                qkv: Linear::new(w, &n.qkv, 3 * dim, dim, bias)?,
                proj: Linear::new(w, &n.proj, dim, dim, bias)?,
                ln_2: ln(w, &n.ln_2)?,
                fc: Linear::new(w, &n.fc, mlp_hidden, dim, bias)?,
                fc_proj: Linear::new(w, &n.fc_proj, dim, mlp_hidden, bias)?,
                act: spec.tap_activation(i),
            });
        }
        let (ln_f, head) = match &spec.arch {
            Arch::Vit { .. } => (ln(w, "norm")?, Some(Linear::new(w, "head", spec.num_classes, dim, true)?)),
            Arch::Gpt { tied, .. } => {
                (ln(w, "transformer.ln_f")?, (!tied).then(|| Linear::new(w, "lm_head", spec.num_classes, dim, false)).transpose()?)
            }
            _ => unreachable!(),
        };
        Ok(Transformer {
            embed,
            blocks,
            ln_f,
            head,
            heads,
            causal: matches!(spec.arch, Arch::Gpt { .. }),
            lm: matches!(spec.arch, Arch::Gpt { lm: true, .. }),
            leaky_slope: spec.leaky_relu_slope,
            dropout: drop.filter(|&p| p > 0.0),
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
