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
//! taps record it ([`crate::nn::TapValues::skip`]) and [`Start::Tap`] carries it.

use crate::nn::{
    batch_norm, block, conv_out, current, dense, ops, Activation, Dense, Frame, LayerDesc, Layout, ResidualBlockDesc, Start, Taps, Weights,
};
use analyzers::LayerKind;
use anyhow::{Context, Result};
use candle_core::Tensor;
use candle_nn::BatchNorm;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};

/// A residual network's block (He et al., 2016; torchvision's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResBlock {
    /// conv3×3 → BN → σ → conv3×3 → BN, + shortcut, σ: two taps.
    Basic,
    /// conv1×1 → BN → σ → conv3×3 (the block's stride) → BN → σ → conv1×1
    /// (4× the width) → BN, + shortcut, σ: three taps (torchvision "v1.5").
    Bottleneck,
}

impl ResBlock {
    pub fn expansion(self) -> usize {
        match self {
            ResBlock::Basic => 1,
            ResBlock::Bottleneck => 4,
        }
    }
}

/// A residual network's stem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stem {
    /// 3×3 conv, stride 1, no max-pool: CIFAR ResNets, and torchvision
    /// ResNets adapted to 32×32 inputs.
    Small,
    /// torchvision's ImageNet stem: 7×7 conv, stride 2, then a 3×3 max-pool
    /// with stride 2.
    Imagenet,
}

/// The shortcut of a block whose shape changes (He et al., 2016, §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shortcut {
    /// Option A: the input subsampled by the stride and zero-padded in
    /// channels, half on each side (no parameters; the CIFAR ResNets).
    A,
    /// Option B: a 1×1 convolution with the block's stride and a BatchNorm
    /// (torchvision's `downsample.0`, `downsample.1`).
    B,
}

/// `{"kind": "resnet", ...}`: a residual network with BatchNorm after every
/// convolution (torchvision's `ResNet` layout and names: `conv1`, `bn1`,
/// `layerS.B.convI`/`bnI`, `layerS.B.downsample.0/1`, `fc`). Stage `S` has
/// `stages[S]` blocks of width `widths[S]`; its first block has stride 2
/// except in the first stage. Global average pool, then `fc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResnetSpec {
    pub block: ResBlock,
    pub stages: Vec<usize>,
    pub widths: Vec<usize>,
    pub stem: Stem,
    pub stem_width: usize,
    pub shortcut: Shortcut,
}

/// The presets of this file, with `lintrace-train --model NAME`'s names.
pub const PRESETS: &[&str] = &["resnet20", "resnet32", "resnet56", "resnet18", "resnet34", "resnet50"];

impl ResnetSpec {
    /// The named residual networks: CIFAR ResNets (He et al., 2016, §4.2:
    /// 6n+2 layers, widths 16/32/64, shortcut A) and torchvision's.
    pub fn preset(name: &str) -> Option<ResnetSpec> {
        let cifar = |n: usize| ResnetSpec {
            block: ResBlock::Basic,
            stages: vec![n; 3],
            widths: vec![16, 32, 64],
            stem: Stem::Small,
            stem_width: 16,
            shortcut: Shortcut::A,
        };
        let tv = |block: ResBlock, stages: [usize; 4]| ResnetSpec {
            block,
            stages: stages.to_vec(),
            widths: vec![64, 128, 256, 512],
            stem: Stem::Imagenet,
            stem_width: 64,
            shortcut: Shortcut::B,
        };
        Some(match name {
            "resnet20" => cifar(3),
            "resnet32" => cifar(5),
            "resnet56" => cifar(9),
            "resnet18" => tv(ResBlock::Basic, [2, 2, 2, 2]),
            "resnet34" => tv(ResBlock::Basic, [3, 4, 6, 3]),
            "resnet50" => tv(ResBlock::Bottleneck, [3, 4, 6, 3]),
            _ => return None,
        })
    }
}

impl super::ArchSpec for ResnetSpec {
    fn num_taps(&self) -> usize {
        let per_block = match self.block {
            ResBlock::Basic => 2,
            ResBlock::Bottleneck => 3,
        };
        1 + self.stages.iter().fold(0usize, |a, &n| a.saturating_add(n)).saturating_mul(per_block)
    }

    fn validate(&self, frame: &Frame) -> Result<(), String> {
        let ResnetSpec { block, stages, widths, stem_width, shortcut, .. } = self;
        if frame.input_shape.len() != 3 {
            return Err(format!("a resnet needs input_shape [channels, height, width], got {:?}", frame.input_shape));
        }
        if stages.is_empty() || stages.len() != widths.len() {
            return Err(format!("a resnet needs one width per stage: {} stages, {} widths", stages.len(), widths.len()));
        }
        if stages.contains(&0) || widths.contains(&0) || *stem_width == 0 {
            return Err("resnet stages, widths and stem_width must be positive".into());
        }
        // Bounds that keep every shape computation below far from
        // overflow; the size guard then checks the real sizes.
        let blocks = stages.iter().fold(0usize, |a, &n| a.saturating_add(n));
        if stages.len() > 64 || blocks > 10_000 || widths.iter().chain([stem_width]).any(|&w| w > 1 << 24) {
            return Err(format!(
                "resnet too large: {} stages (at most 64), {blocks} blocks (at most 10000), or a width above 2^24",
                stages.len()
            ));
        }
        if *shortcut == Shortcut::A {
            let mut c = *stem_width;
            for &w in widths {
                let out = w * block.expansion();
                if out < c {
                    return Err(format!("shortcut a (zero padding) cannot narrow {c} channels to {out}: use shortcut b"));
                }
                c = out;
            }
        }
        Ok(())
    }

    /// The convolutions in forward order (torchvision's order within a
    /// block: conv1, conv2, [conv3], downsample.0), each feeding a tap except
    /// projection shortcuts, then `fc`; and the residual blocks.
    fn layout(&self, frame: &Frame) -> Layout {
        let ResnetSpec { block, stages, widths, stem, stem_width, shortcut } = self;
        let conv = |name: String, out: usize, inp: &[usize], k: usize, stride: usize, padding: usize, norm: String| LayerDesc {
            name,
            kind: LayerKind::Conv2d,
            weight_shape: vec![out, inp[0], k, k],
            tap: None,
            bias: false,
            stride,
            padding,
            norm: Some(norm),
            in_shape: inp.to_vec(),
        };
        let out_shape =
            |out: usize, inp: &[usize], k: usize, s: usize, p: usize| vec![out, conv_out(inp[1], k, s, p), conv_out(inp[2], k, s, p)];
        let mut l = Layout::empty();
        // Pushes a tap (its z comes from the conv's BatchNorm), returns its index.
        let tap = |l: &mut Layout, layer: LayerDesc, module: String, shape: Vec<usize>| {
            let z_name = layer.norm.clone().expect("resnet convs have a norm");
            l.push_tap(frame, layer, z_name, module, shape)
        };
        let (k, s, p) = match stem {
            Stem::Small => (3, 1, 1),
            Stem::Imagenet => (7, 2, 3),
        };
        let mut x = frame.input_shape.clone();
        let y = out_shape(*stem_width, &x, k, s, p);
        tap(&mut l, conv("conv1".into(), *stem_width, &x, k, s, p, "bn1".into()), "relu".into(), y.clone());
        x = y;
        if *stem == Stem::Imagenet {
            x = vec![x[0], conv_out(x[1], 3, 2, 1), conv_out(x[2], 3, 2, 1)];
        }
        for (si, (&n, &planes)) in stages.iter().zip(widths).enumerate() {
            for b in 0..n {
                let stride = if si > 0 && b == 0 { 2 } else { 1 };
                let name = format!("layer{}.{b}", si + 1);
                let relu = format!("{name}.relu");
                let out_c = planes * block.expansion();
                let block_in = x.clone();
                let first;
                let mut h = x.clone();
                match block {
                    ResBlock::Basic => {
                        let y = out_shape(planes, &h, 3, stride, 1);
                        first = tap(
                            &mut l,
                            conv(format!("{name}.conv1"), planes, &h, 3, stride, 1, format!("{name}.bn1")),
                            relu.clone(),
                            y.clone(),
                        );
                        h = y;
                        let y = out_shape(planes, &h, 3, 1, 1);
                        tap(&mut l, conv(format!("{name}.conv2"), planes, &h, 3, 1, 1, format!("{name}.bn2")), relu.clone(), y.clone());
                        h = y;
                    }
                    ResBlock::Bottleneck => {
                        let y = out_shape(planes, &h, 1, 1, 0);
                        first =
                            tap(&mut l, conv(format!("{name}.conv1"), planes, &h, 1, 1, 0, format!("{name}.bn1")), relu.clone(), y.clone());
                        h = y;
                        let y = out_shape(planes, &h, 3, stride, 1);
                        tap(
                            &mut l,
                            conv(format!("{name}.conv2"), planes, &h, 3, stride, 1, format!("{name}.bn2")),
                            relu.clone(),
                            y.clone(),
                        );
                        h = y;
                        let y = out_shape(out_c, &h, 1, 1, 0);
                        tap(&mut l, conv(format!("{name}.conv3"), out_c, &h, 1, 1, 0, format!("{name}.bn3")), relu.clone(), y.clone());
                        h = y;
                    }
                }
                let changes = stride != 1 || block_in[0] != out_c;
                if changes && *shortcut == Shortcut::B {
                    l.layers.push(conv(format!("{name}.downsample.0"), out_c, &block_in, 1, stride, 0, format!("{name}.downsample.1")));
                }
                l.blocks.push(ResidualBlockDesc {
                    name,
                    first_tap: first,
                    last_tap: l.taps.len() - 1,
                    in_shape: block_in,
                    out_shape: h.clone(),
                    stride,
                    receptive_field: match block {
                        ResBlock::Basic => 5,
                        ResBlock::Bottleneck => 3,
                    },
                    identity_shortcut: !changes,
                    kind: "residual_block",
                    streams: None,
                });
                x = h;
            }
        }
        l.layers.push(dense("fc".into(), frame.num_classes, x[0]));
        l
    }
}

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
        let z = ops::conv2d(x, &self.weight, self.padding, self.stride)?;
        Ok(ops::batch_norm(&self.bn, &z, train)?)
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
    let (ho, wo) = (conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1));
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
    pub fn new(spec: &ResnetSpec, frame: &Frame, layout: &Layout, w: &mut Weights) -> Result<Self> {
        let ResnetSpec { stem, shortcut, .. } = spec;
        let find = |name: &str| layout.layers.iter().find(|l| l.name == name).with_context(|| format!("resnet layer {name} missing"));
        let act = |l: &LayerDesc| frame.activation(l.tap.expect("a tap's conv"));
        let stem_desc = find("conv1")?;
        let stem_conv = (ConvBn::new(stem_desc, w)?, act(stem_desc));
        let mut blocks = Vec::new();
        for b in &layout.blocks {
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
            leaky_slope: frame.leaky_relu_slope,
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
        h = block(start, 0, h, taps, *act, slope, |x| stem.forward(x, train))?;
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
                h = block(start, tap, h, taps, *act, slope, |x| conv.forward(x, train))?;
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
