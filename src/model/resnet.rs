//! Residual networks (He et al., 2016), torchvision's layout and names:
//!
//! ```text
//! conv1 → bn1 → σ (tap 0) [→ 3×3/2 max-pool]
//! for each block `layerS.B`:
//!     basic:      conv1 → bn1 → σ (tap) → conv2 → bn2 ─┐
//!     bottleneck: conv1 → bn1 → σ (tap) → conv2 → bn2 → σ (tap) → conv3 → bn3 ─┐
//!     shortcut:   identity | option A (subsample + zero channels) | downsample.0 → downsample.1
//!     sum → σ (tap; its z is the sum)
//! global average pool → fc
//! ```
//!
//! Every convolution here has no bias (the BatchNorm after it has one).
//! A pass resumed inside a block needs the block's input for the shortcut:
//! taps record it ([`super::TapValues::skip`]) and [`Start::Tap`] carries it.

use super::{batch_norm, current, Dense, Start, Taps, Weights};
use crate::spec::{Activation, Arch, LayerDesc, ModelSpec, Shortcut, Stem};
use anyhow::{Context, Result};
use candle_core::Tensor;
use candle_nn::BatchNorm;
use std::sync::atomic::{AtomicBool, Ordering};

/// A bias-free convolution followed by its BatchNorm.
struct ConvBn {
    weight: Tensor,
    stride: usize,
    padding: usize,
    bn: BatchNorm,
}

impl ConvBn {
    fn new(desc: &LayerDesc, w: &mut Weights) -> Result<Self> {
        let bn = desc.norm.as_deref().context("a resnet convolution has a BatchNorm")?;
        let bn = batch_norm(w, bn, desc.weight_shape[0])?;
        Ok(ConvBn { weight: w.take(&format!("{}.weight", desc.name), &desc.weight_shape)?, stride: desc.stride, padding: desc.padding, bn })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let z = super::ops::conv2d(x, &self.weight, self.padding, self.stride)?;
        Ok(super::ops::batch_norm(&self.bn, &z, train)?)
    }
}

enum ShortcutPath {
    Identity,
    /// Option A: keep every `stride`-th row and column, pad channels with
    /// zeros to `out_channels`, half before and half after (as the common
    /// PyTorch CIFAR ResNet, `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))`).
    Pad {
        stride: usize,
        out_channels: usize,
    },
    Projection(ConvBn),
}

impl ShortcutPath {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            ShortcutPath::Identity => Ok(x.clone()),
            ShortcutPath::Pad { stride, out_channels } => {
                let x = subsample(x, *stride)?;
                let c = x.dim(1)?;
                let left = (out_channels - c) / 2;
                Ok(x.pad_with_zeros(1, left, out_channels - c - left)?)
            }
            ShortcutPath::Projection(p) => p.forward(x, train),
        }
    }
}

/// `x[:, :, ::s, ::s]`.
fn subsample(x: &Tensor, s: usize) -> Result<Tensor> {
    if s == 1 {
        return Ok(x.clone());
    }
    let (b, c, h, w) = x.dims4()?;
    let (ho, wo) = (h.div_ceil(s), w.div_ceil(s));
    // Pad to multiples of s, view as [B, C, Ho, s, Wo, s], keep offset 0.
    let x = x.pad_with_zeros(2, 0, ho * s - h)?.pad_with_zeros(3, 0, wo * s - w)?;
    Ok(x.reshape((b, c, ho, s, wo, s))?.narrow(3, 0, 1)?.narrow(5, 0, 1)?.reshape((b, c, ho, wo))?)
}

/// torchvision's stem pool: 3×3 max-pool, stride 2, padding 1, as the
/// maximum of its nine strided window offsets (candle's `max_pool2d` has no
/// backward when the window and stride differ). Padding is −∞: it never wins.
fn stem_pool(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (ho, wo) = (crate::spec::conv_out(h, 3, 2, 1), crate::spec::conv_out(w, 3, 2, 1));
    let ninf = |shape: (usize, usize, usize, usize)| Tensor::full(f32::NEG_INFINITY, shape, x.device())?.to_dtype(x.dtype());
    let rows = ninf((b, c, 1, w))?;
    let x = Tensor::cat(&[&rows, x, &rows], 2)?;
    let cols = ninf((b, c, h + 2, 1))?;
    let x = Tensor::cat(&[&cols, &x, &cols], 3)?;
    let mut out: Option<Tensor> = None;
    for i in 0..3 {
        for j in 0..3 {
            let s = subsample(&x.narrow(2, i, 2 * ho - 1)?.narrow(3, j, 2 * wo - 1)?, 2)?;
            out = Some(match out {
                None => s,
                Some(m) => m.maximum(&s)?,
            });
        }
    }
    Ok(out.expect("nine offsets"))
}

struct Block {
    /// The convolutions feeding the block's taps; the last one's z is the
    /// sum with the shortcut.
    convs: Vec<(ConvBn, Activation)>,
    shortcut: ShortcutPath,
}

pub struct Resnet {
    stem: (ConvBn, Activation),
    stem_pool: bool,
    blocks: Vec<Block>,
    fc: Dense,
    leaky_slope: f64,
    training: AtomicBool,
}

impl Resnet {
    pub fn new(spec: &ModelSpec, w: &mut Weights) -> Result<Self> {
        let Arch::Resnet { stem, shortcut, .. } = &spec.arch else { unreachable!("Resnet::new on a non-resnet spec") };
        let layers = spec.layers();
        let find = |name: &str| layers.iter().find(|l| l.name == name).with_context(|| format!("resnet layer {name} missing"));
        let act = |l: &LayerDesc| spec.tap_activation(l.tap.expect("a tap's conv"));
        let stem_desc = find("conv1")?;
        let stem_conv = (ConvBn::new(stem_desc, w)?, act(stem_desc));
        let mut blocks = Vec::new();
        for b in spec.residual_blocks() {
            let mut convs = Vec::new();
            for i in 1..=(b.last_tap - b.first_tap + 1) {
                let d = find(&format!("{}.conv{i}", b.name))?;
                convs.push((ConvBn::new(d, w)?, act(d)));
            }
            let shortcut = if b.identity_shortcut {
                ShortcutPath::Identity
            } else {
                match shortcut {
                    Shortcut::A => ShortcutPath::Pad { stride: b.stride, out_channels: b.out_shape[0] },
                    Shortcut::B => ShortcutPath::Projection(ConvBn::new(find(&format!("{}.downsample.0", b.name))?, w)?),
                }
            };
            blocks.push(Block { convs, shortcut });
        }
        Ok(Resnet {
            stem: stem_conv,
            stem_pool: *stem == Stem::Imagenet,
            blocks,
            fc: Dense::new(find("fc")?, w)?,
            leaky_slope: spec.leaky_relu_slope,
            training: AtomicBool::new(false),
        })
    }

    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed);
    }

    pub fn forward(&self, start: Start<'_>, taps: &mut Taps) -> Result<Tensor> {
        let train = self.training.load(Ordering::Relaxed);
        let slope = self.leaky_slope;
        let mut h = start.input().cloned();
        let (stem, act) = &self.stem;
        h = super::block(start, 0, h, taps, *act, slope, |x| stem.forward(x, train))?;
        if self.stem_pool {
            h = h.map(|x| stem_pool(&x)).transpose()?;
        }
        let mut tap = 1;
        for blk in &self.blocks {
            let n = blk.convs.len();
            let last = tap + n - 1;
            if start.skips(last) {
                tap += n;
                continue;
            }
            // The block's input: the carried activation, or (resuming inside
            // this block) the one recorded with the resume tap.
            let x_in = h.clone().or_else(|| start.skip().cloned());
            taps.set_skip(x_in.clone());
            for (conv, act) in &blk.convs[..n - 1] {
                h = super::block(start, tap, h, taps, *act, slope, |x| conv.forward(x, train))?;
                tap += 1;
            }
            let (conv, act) = &blk.convs[n - 1];
            let z = match start.z_at(tap) {
                Some(z) => z.clone(),
                None => {
                    let x = x_in.as_ref().context("resuming inside a residual block needs the block's input (TapValues::skip)")?;
                    (conv.forward(current(&h), train)? + blk.shortcut.forward(x, train)?)?
                }
            };
            h = Some(taps.apply(tap, *act, slope, h.as_ref(), &z)?);
            taps.set_skip(None);
            tap += 1;
        }
        let x = current(&h);
        self.fc.forward(&x.flatten_from(2)?.mean(2)?)
    }
}
