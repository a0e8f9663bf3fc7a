//! The forward pass of Hugging Face decoder-only language models
//! (`Arch::HfCausalLm`; the layout and names are `mod.rs` beside it), written
//! out as `transformers`' eager code computes it, with taps at every MLP
//! nonlinearity, the residual streams and the attention weights recorded.
//! Evaluation only: nothing here is trained, so the norms, activations and
//! the causal softmax take the fused evaluation kernels (`nn::ops`).
//!
//! Weights arrive in `[out, in]` layout for every family: `hf::load`
//! transposes GPT-2's `Conv1D` weights (stored `[in, out]`) once, by
//! `model_type`, never by shape.

use super::{Family, HfArch, Norm, Positions, Residual};
use crate::arch::transformer::Linear;
use crate::nn::{ops, Activation, Frame, Start, Taps, Weights};
use anyhow::{anyhow, Result};
use candle_core::{DType, Tensor, D};

/// LayerNorm (with or without parameters) or RMSNorm over the last dimension.
struct HfNorm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    rms: bool,
    eps: f64,
}

impl HfNorm {
    fn new(w: &mut Weights, norm: Norm, name: &str, width: usize) -> Result<Self> {
        Ok(match norm {
            Norm::LayerNorm { eps } => HfNorm {
                weight: Some(w.take(&format!("{name}.weight"), &[width])?),
                bias: Some(w.take(&format!("{name}.bias"), &[width])?),
                rms: false,
                eps,
            },
            Norm::LayerNormNoAffine { eps } => HfNorm { weight: None, bias: None, rms: false, eps },
            Norm::RmsNorm { eps } => HfNorm { weight: Some(w.take(&format!("{name}.weight"), &[width])?), bias: None, rms: true, eps },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::norm(x, self.weight.as_ref(), self.bias.as_ref(), self.eps, self.rms)?)
    }
}

struct Layer {
    /// One fused projection (GPT-NeoX, GPT-2) or q, k, v.
    qkv: Vec<Linear>,
    out: Linear,
    norm_1: HfNorm,
    norm_2: HfNorm,
    q_norm: Option<HfNorm>,
    k_norm: Option<HfNorm>,
    fc: Linear,
    up: Option<Linear>,
    down: Linear,
    act: Activation,
}

pub struct HfCausalLm {
    arch: HfArch,
    embed: Tensor,
    wpe: Option<Tensor>,
    layers: Vec<Layer>,
    final_norm: HfNorm,
    /// `None`: tied to the embedding.
    head: Option<Linear>,
    /// Rotary cos and sin, [positions, rotary dims].
    rotary: Option<(Tensor, Tensor)>,
    /// Added to the attention scores: −∞ where a key follows its query.
    causal_mask: Tensor,
    positions: usize,
}

impl HfCausalLm {
    pub fn new(arch: &HfArch, frame: &Frame, w: &mut Weights) -> Result<Self> {
        let arch = arch.clone();
        let t = frame.input_shape[0];
        let (dim, hd) = (arch.dim, arch.head_dim);
        let embed = w.take(&format!("{}.weight", arch.embed_name()), &[arch.vocab, dim])?;
        let wpe = match arch.positions {
            Positions::Learned { max } => Some(w.take(&format!("{}.weight", arch.position_name()), &[max, dim])?.narrow(0, 0, t)?),
            Positions::Rotary { .. } => None,
        };
        let mut layers = Vec::with_capacity(arch.depth);
        for i in 0..arch.depth {
            let n = arch.names(i);
            let qkv = n
                .qkv
                .iter()
                .zip(arch.qkv_rows())
                .map(|(name, rows)| Linear::new(w, name, rows, dim, arch.attention_bias))
                .collect::<Result<Vec<_>>>()?;
            let qk_norm = |w: &mut Weights, name: &str, heads: usize| -> Result<Option<HfNorm>> {
                arch.qk_norm.then(|| HfNorm::new(w, arch.norm, name, heads * hd)).transpose()
            };
            layers.push(Layer {
                qkv,
                out: Linear::new(w, &n.out, dim, arch.heads * hd, arch.attention_bias)?,
                norm_1: HfNorm::new(w, arch.norm, &n.norm_1, dim)?,
                norm_2: HfNorm::new(w, arch.norm, &n.norm_2, dim)?,
                q_norm: qk_norm(w, &n.q_norm, arch.heads)?,
                k_norm: qk_norm(w, &n.k_norm, arch.kv_heads)?,
                fc: Linear::new(w, &n.fc, arch.mlp_hidden, dim, arch.mlp_bias)?,
                up: arch.gated.then(|| Linear::new(w, &n.up, arch.mlp_hidden, dim, arch.mlp_bias)).transpose()?,
                down: Linear::new(w, &n.down, dim, arch.mlp_hidden, arch.mlp_bias)?,
                act: frame.activation(i),
            });
        }
        let final_norm = HfNorm::new(w, arch.norm, arch.final_norm_name(), dim)?;
        let head = (!arch.tied).then(|| Linear::new(w, arch.head_name(), arch.vocab, dim, false)).transpose()?;
        let rotary = match arch.positions {
            Positions::Rotary { theta, dims, .. } => Some(rotary_tables(theta, dims, t, embed.device())?),
            Positions::Learned { .. } => None,
        };
        // Keys after the query get a score whose exponential is exactly 0.
        let mask: Vec<f32> = (0..t * t).map(|ij| if ij % t > ij / t { f32::NEG_INFINITY } else { 0.0 }).collect();
        let causal_mask = Tensor::from_vec(mask, (t, t), embed.device())?;
        Ok(HfCausalLm { arch, embed, wpe, layers, final_norm, head, rotary, causal_mask, positions: t })
    }

    /// Queries, keys and values of `h` [b, t, d], each [b, heads, t, head_dim]
    /// (keys and values with the key/value heads).
    fn qkv(&self, layer: &Layer, h: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let a = &self.arch;
        let (b, t, _) = h.dims3()?;
        let (heads, kv, hd) = (a.heads, a.kv_heads, a.head_dim);
        let split = |x: Tensor, n: usize| -> Result<Tensor> { Ok(x.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?) };
        let (q, k, v) = match a.family {
            // GPT-NeoX interleaves per head: [q_h, k_h, v_h] for each head h.
            Family::GptNeox => {
                let qkv = layer.qkv[0].forward(h)?.reshape((b, t, heads, 3 * hd))?.transpose(1, 2)?;
                let part = |i: usize| -> Result<Tensor> { Ok(qkv.narrow(D::Minus1, i * hd, hd)?.contiguous()?) };
                (part(0)?, part(1)?, part(2)?)
            }
            // GPT-2: [all queries, all keys, all values].
            Family::Gpt2 => {
                let qkv = layer.qkv[0].forward(h)?;
                let d = heads * hd;
                (split(qkv.narrow(2, 0, d)?, heads)?, split(qkv.narrow(2, d, d)?, heads)?, split(qkv.narrow(2, 2 * d, d)?, heads)?)
            }
            Family::Llama | Family::Olmo | Family::Olmo2 => {
                let mut q = layer.qkv[0].forward(h)?;
                let mut k = layer.qkv[1].forward(h)?;
                let mut v = layer.qkv[2].forward(h)?;
                if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                    q = qn.forward(&q)?;
                    k = kn.forward(&k)?;
                }
                if let Some(c) = a.clip_qkv {
                    q = q.clamp(-c, c)?;
                    k = k.clamp(-c, c)?;
                    v = v.clamp(-c, c)?;
                }
                (split(q, heads)?, split(k, kv)?, split(v, kv)?)
            }
        };
        let (q, k) = match &self.rotary {
            Some((cos, sin)) => (rotate(&q, cos, sin)?, rotate(&k, cos, sin)?),
            None => (q, k),
        };
        Ok((q, repeat_kv(k, heads / kv)?, repeat_kv(v, heads / kv)?))
    }

    /// Causal self-attention of `h`: the output projection and the weights
    /// [b, heads, t, t].
    fn attention(&self, i: usize, layer: &Layer, h: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t, _) = h.dims3()?;
        let (q, k, v) = self.qkv(layer, h)?;
        let mut scale = 1.0 / (self.arch.head_dim as f64).sqrt();
        if self.arch.scale_by_inverse_layer {
            scale /= (i + 1) as f64;
        }
        let att = ops::causal_softmax(&q.matmul(&k.t()?)?, scale, &self.causal_mask)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, self.arch.heads * self.arch.head_dim))?;
        Ok((layer.out.forward(&y)?, att))
    }

    /// The MLP after its tap: down(a), or down(a ⊙ up(u)) when gated.
    fn mlp_out(&self, layer: &Layer, u: Option<&Tensor>, a: &Tensor) -> Result<Tensor> {
        let m = match &layer.up {
            Some(up) => {
                let u = u.ok_or_else(|| anyhow!("resuming a gated MLP needs its input (the tap's recorded input)"))?;
                (a * up.forward(u)?)?
            }
            None => a.clone(),
        };
        layer.down.forward(&m)
    }

    /// From `start` to the logits, [b · t, vocab]. Resuming at tap `l` takes
    /// its z, the stream after layer l's attention (`skip`) and, for a gated
    /// MLP, the MLP's input (the tap's recorded input).
    pub fn forward(&self, start: Start<'_>, taps: &mut Taps) -> Result<Tensor> {
        let mut x = start.input().map(|ids| self.embed(ids)).transpose()?;
        if let Some(x0) = &x {
            taps.stream(x0);
        }
        // A parallel layer's input plus its MLP's output, X + mlp(norm_2(X)):
        // the MLP sublayer's stream, recorded after the others.
        let mut parallel_mlp: Vec<Tensor> = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            if start.skips(i) {
                continue;
            }
            let x_in = x.clone().filter(|_| taps.keeping_streams());
            let (mid, u, z) = match start.z_at(i) {
                Some(z) => {
                    let mid = start.skip().ok_or_else(|| anyhow!("resuming at tap {i} needs the stream after its attention"))?;
                    (mid.clone(), start.tap_input().cloned(), z.clone())
                }
                None => {
                    let x_in = x.as_ref().expect("a pass has a stream from its start on");
                    let (mid, u) = match self.arch.residual {
                        Residual::PreNorm => {
                            let (att_out, att) = self.attention(i, layer, &layer.norm_1.forward(x_in)?)?;
                            taps.attention(&att);
                            let mid = (x_in + att_out)?;
                            let u = layer.norm_2.forward(&mid)?;
                            (mid, u)
                        }
                        Residual::Parallel => {
                            let (att_out, att) = self.attention(i, layer, &layer.norm_1.forward(x_in)?)?;
                            taps.attention(&att);
                            ((x_in + att_out)?, layer.norm_2.forward(x_in)?)
                        }
                        Residual::PostNorm => {
                            let (att_out, att) = self.attention(i, layer, x_in)?;
                            taps.attention(&att);
                            let mid = (x_in + layer.norm_1.forward(&att_out)?)?;
                            (mid.clone(), mid)
                        }
                    };
                    taps.stream(&mid);
                    let z = layer.fc.forward(&u)?;
                    (mid, Some(u), z)
                }
            };
            taps.set_skip(Some(mid.clone()));
            let a = taps.apply(i, layer.act, 0.0, u.as_ref(), &z)?;
            taps.set_skip(None);
            let m = self.mlp_out(layer, u.as_ref(), &a)?;
            let m = match self.arch.residual {
                Residual::PostNorm => layer.norm_2.forward(&m)?,
                _ => m,
            };
            if let (Residual::Parallel, Some(x_in), true) = (self.arch.residual, &x_in, taps.keeping_streams()) {
                parallel_mlp.push((x_in + &m)?);
            }
            let out = (&mid + m)?;
            taps.stream(&out);
            x = Some(out);
        }
        for s in &parallel_mlp {
            taps.stream(s);
        }
        let x = self.final_norm.forward(x.as_ref().expect("a pass has a stream from its start on"))?;
        let (b, t, d) = x.dims3()?;
        let x = x.reshape((b * t, d))?;
        Ok(match &self.head {
            Some(head) => head.forward(&x)?,
            None => x.matmul(&self.embed.t()?)?,
        })
    }

    /// The first residual stream [b, t, dim] of token ids [b, t].
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t != self.positions {
            return Err(anyhow!("windows of {t} tokens, but the model was set up for {}", self.positions));
        }
        let flat = ids.to_dtype(DType::U32)?.flatten_all()?;
        let x = self.embed.index_select(&flat, 0)?.reshape((b, t, self.arch.dim))?;
        Ok(match &self.wpe {
            Some(wpe) => x.broadcast_add(wpe)?,
            None => x,
        })
    }
}

/// cos and sin of rotary position embeddings, [t, dims]: frequencies
/// theta^(−2j/dims) for j < dims/2, repeated for both halves (rotate-half,
/// as `transformers` and GPT-NeoX compute them), in f64 before rounding.
fn rotary_tables(theta: f64, dims: usize, t: usize, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
    let half = dims / 2;
    let (mut cos, mut sin) = (Vec::with_capacity(t * dims), Vec::with_capacity(t * dims));
    for p in 0..t {
        for j in 0..dims {
            // transformers computes inv_freq in f32 and the angle in f32.
            let inv = (1.0 / theta.powf((2 * (j % half)) as f64 / dims as f64)) as f32;
            let angle = (p as f32) * inv;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    Ok((Tensor::from_vec(cos, (t, dims), device)?, Tensor::from_vec(sin, (t, dims), device)?))
}

/// Rotary embedding of the first `dims` dimensions of `x` [b, h, t, hd].
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (dims, hd) = (cos.dims()[1], x.dims()[3]);
    let rot = x.narrow(D::Minus1, 0, dims)?;
    let half = dims / 2;
    let rotated = Tensor::cat(&[&rot.narrow(D::Minus1, half, half)?.neg()?, &rot.narrow(D::Minus1, 0, half)?], D::Minus1)?;
    let r = (rot.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?;
    Ok(if dims == hd { r } else { Tensor::cat(&[&r, &x.narrow(D::Minus1, dims, hd - dims)?], D::Minus1)?.contiguous()? })
}

/// Each key/value head repeated for the `rep` query heads that share it
/// (grouped-query attention: query head h reads key/value head h / rep).
fn repeat_kv(x: Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x);
    }
    let (b, kv, t, hd) = x.dims4()?;
    Ok(x.unsqueeze(2)?.broadcast_as((b, kv, rep, t, hd))?.reshape((b, kv * rep, t, hd))?)
}
