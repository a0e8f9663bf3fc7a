//! The CNN: a VGG-style `features` stack of [conv → σ (tap)] and 2×2
//! max-pools, flatten (C, H, W order), then a `classifier` of
//! [dense → σ (tap)] and a dense head; torchvision's VGGs (with BatchNorm,
//! adaptive pool and dropout) are presets of it.
//! PyTorch: `features = nn.Sequential(Conv2d, Act, MaxPool2d, …)`,
//! `classifier = nn.Sequential(Linear, Act, …, Linear)`.

use crate::nn::{
    batch_norm, block, current, dense, dropout, ops, Activation, Conv2d, Dense, Frame, LayerDesc, Layout, SizeGuard, Start, Taps, Weights,
};
use analyzers::LayerKind;
use anyhow::Result;
use candle_core::Tensor;
use candle_nn::BatchNorm;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One entry of a CNN's `conv` list: a conv layer's output channels, or "M"
/// for a 2×2 max-pool (the torchvision VGG convention).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ConvItem {
    Conv(usize),
    Pool(PoolMarker),
}

/// Read by hand rather than untagged, so that a wrong entry is named
/// (an untagged enum only says that nothing matched).
impl<'de> Deserialize<'de> for ConvItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entry;
        impl serde::de::Visitor<'_> for Entry {
            type Value = ConvItem;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a channel count or \"M\" (a 2×2 max-pool)")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ConvItem, E> {
                usize::try_from(n).map(ConvItem::Conv).map_err(|_| E::custom(format!("conv entry {n} is too large")))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ConvItem, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(format!("conv entry {n} is neither a channel count nor \"M\"")))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ConvItem, E> {
                match s {
                    "M" | "m" => Ok(ConvItem::Pool(PoolMarker::M)),
                    _ => Err(E::custom(format!("conv entry '{s}' is neither a channel count nor \"M\""))),
                }
            }
        }
        d.deserialize_any(Entry)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolMarker {
    M,
}

/// `{"kind": "cnn", ...}`: a VGG-style conv stack (3×3 "same" convs, each
/// followed by a tap, and 2×2 max-pools), flatten, dense layers with taps,
/// dense head. With `batch_norm`, a BatchNorm after every conv, as
/// torchvision's VGG-BN: conv `features.i`, BatchNorm `features.i+1`, σ
/// `features.i+2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CnnSpec {
    pub conv: Vec<ConvItem>,
    pub kernel_size: usize,
    pub dense: Vec<usize>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch_norm: bool,
    /// torchvision's VGG: an adaptive average pool to `s × s` after the
    /// features (`avgpool`), so the classifier's input is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_pool: Option<usize>,
    /// torchvision's VGG classifier: Linear, ReLU, Dropout(p) per dense
    /// layer (`classifier.0`, `.3`, `.6`); dropout acts in training only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
}

/// The presets of this file, with `lintrace-train --model NAME`'s names.
pub const PRESETS: &[&str] = &["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn"];

impl CnnSpec {
    /// torchvision's VGG configurations A, B and D, plain and with BatchNorm.
    pub fn preset(name: &str) -> Option<CnnSpec> {
        const A: &str = "64,M,128,M,256,256,M,512,512,M,512,512,M";
        const B: &str = "64,64,M,128,128,M,256,256,M,512,512,M,512,512,M";
        const D: &str = "64,64,M,128,128,M,256,256,256,M,512,512,512,M,512,512,512,M";
        let (cfg, batch_norm) = match name {
            "vgg11" => (A, false),
            "vgg11_bn" => (A, true),
            "vgg13" => (B, false),
            "vgg13_bn" => (B, true),
            "vgg16" => (D, false),
            "vgg16_bn" => (D, true),
            _ => return None,
        };
        let conv = cfg
            .split(',')
            .map(|c| match c {
                "M" => ConvItem::Pool(PoolMarker::M),
                n => ConvItem::Conv(n.parse().expect("a channel count")),
            })
            .collect();
        Some(CnnSpec { conv, kernel_size: 3, dense: vec![4096, 4096], batch_norm, adaptive_pool: Some(7), dropout: Some(0.5) })
    }
}

impl super::ArchSpec for CnnSpec {
    fn num_taps(&self) -> usize {
        self.conv.iter().filter(|c| matches!(c, ConvItem::Conv(_))).count() + self.dense.len()
    }

    fn validate(&self, frame: &Frame) -> Result<(), String> {
        let input = &frame.input_shape;
        if input.len() != 3 {
            return Err(format!("a cnn needs input_shape [channels, height, width], got {input:?}"));
        }
        if self.kernel_size == 0 || self.kernel_size % 2 == 0 {
            return Err(format!("kernel_size must be odd (\"same\" padding), got {}", self.kernel_size));
        }
        if self.conv.iter().any(|c| *c == ConvItem::Conv(0)) || self.dense.contains(&0) {
            return Err("cnn widths must be positive".into());
        }
        if matches!(self.adaptive_pool, Some(s) if s == 0 || s > 1 << 12) {
            return Err("adaptive_pool must be between 1 and 4096".into());
        }
        if matches!(self.dropout, Some(p) if !(0.0..1.0).contains(&p)) {
            return Err("dropout must be in [0, 1)".into());
        }
        let (mut h, mut w) = (input[1], input[2]);
        for item in &self.conv {
            if let ConvItem::Pool(_) = item {
                if h < 2 || w < 2 {
                    return Err(format!("max-pool on a {h}×{w} map: too many \"M\" entries"));
                }
                h /= 2;
                w /= 2;
            }
        }
        Ok(())
    }

    fn check_sizes(&self, frame: &Frame, guard: &mut SizeGuard) -> Result<(), String> {
        let mul = SizeGuard::mul;
        let input = &frame.input_shape;
        let (mut c, mut h, mut w) = (input[0] as u64, input[1], input[2]);
        for item in &self.conv {
            match item {
                ConvItem::Conv(out) => {
                    let k2 = mul(1, self.kernel_size).and_then(|k| mul(k, self.kernel_size));
                    guard.add(k2.and_then(|k| mul(k, *out)).and_then(|n| n.checked_mul(c)), "a convolution")?;
                    mul(*out as u64, h).and_then(|n| mul(n, w)).ok_or_else(|| SizeGuard::too_big("a convolution's output"))?;
                    c = *out as u64;
                }
                ConvItem::Pool(_) => {
                    h /= 2;
                    w /= 2;
                }
            }
        }
        if let Some(side) = self.adaptive_pool {
            (h, w) = (side, side);
        }
        let flat = mul(c, h).and_then(|n| mul(n, w)).ok_or_else(|| SizeGuard::too_big("the flattened features"))?;
        guard.dense(flat, &self.dense, frame.num_classes)
    }

    fn layout(&self, frame: &Frame) -> Layout {
        let mut l = Layout::empty();
        let input = &frame.input_shape;
        let (mut c, mut h, mut w) = (input[0], input[1], input[2]);
        let k = self.kernel_size;
        let mut idx = 0;
        let bn = usize::from(self.batch_norm);
        for item in &self.conv {
            match item {
                ConvItem::Conv(out) => {
                    // docs/metrics.md: the tap's layer is the module that
                    // produces z, with BatchNorm the BatchNorm.
                    let norm = self.batch_norm.then(|| format!("features.{}", idx + 1));
                    let layer = LayerDesc {
                        name: format!("features.{idx}"),
                        kind: LayerKind::Conv2d,
                        weight_shape: vec![*out, c, k, k],
                        tap: None,
                        bias: true,
                        stride: 1,
                        padding: k / 2,
                        norm: norm.clone(),
                        in_shape: vec![c, h, w],
                    };
                    let z_name = norm.unwrap_or_else(|| layer.name.clone());
                    l.push_tap(frame, layer, z_name, format!("features.{}", idx + 1 + bn), vec![*out, h, w]);
                    c = *out;
                    idx += 2 + bn;
                }
                ConvItem::Pool(_) => {
                    h /= 2;
                    w /= 2;
                    idx += 1;
                }
            }
        }
        if let Some(side) = self.adaptive_pool {
            (h, w) = (side, side);
        }
        // torchvision's VGG puts a Dropout after each ReLU: 3 modules per layer.
        let per = if self.dropout.is_some() { 3 } else { 2 };
        let mut prev = c * h * w;
        for (i, &d) in self.dense.iter().enumerate() {
            let layer = dense(format!("classifier.{}", per * i), d, prev);
            l.push_tap(frame, layer.clone(), layer.name, format!("classifier.{}", per * i + 1), vec![d]);
            prev = d;
        }
        l.layers.push(dense(format!("classifier.{}", per * self.dense.len()), frame.num_classes, prev));
        l
    }
}

/// PyTorch's `AdaptiveAvgPool2d((side, side))`: output cell i averages
/// input rows ⌊i·H/side⌋ .. ⌈(i+1)·H/side⌉ (likewise columns). A linear
/// map, applied as one matrix product [B·C, H·W] × [H·W, side²].
fn adaptive_avg_pool(x: &Tensor, side: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let bins = |n: usize, i: usize| (i * n / side, ((i + 1) * n).div_ceil(side));
    let mut m = vec![0f32; h * w * side * side];
    for oi in 0..side {
        let (r0, r1) = bins(h, oi);
        for oj in 0..side {
            let (c0, c1) = bins(w, oj);
            let weight = 1.0 / ((r1 - r0) * (c1 - c0)) as f32;
            for r in r0..r1 {
                for col in c0..c1 {
                    m[(r * w + col) * side * side + oi * side + oj] = weight;
                }
            }
        }
    }
    let m = Tensor::from_vec(m, (h * w, side * side), x.device())?.to_dtype(x.dtype())?;
    Ok(x.reshape((b * c, h * w))?.matmul(&m)?.reshape((b, c, side, side))?)
}

enum Feature {
    Conv(Conv2d, Option<BatchNorm>, Activation),
    MaxPool,
}

pub struct Cnn {
    features: Vec<Feature>,
    /// torchvision VGG's `avgpool`: adaptive average pool to side × side.
    adaptive_pool: Option<usize>,
    /// torchvision VGG's classifier dropout (training only).
    dropout: Option<f64>,
    /// Seeds this step's dropout masks (set by the trainer each step), so a
    /// resumed run draws the same masks.
    dropout_key: AtomicU64,
    classifier: Vec<(Dense, Activation)>,
    head: Dense,
    leaky_slope: f64,
    /// BatchNorm with batch statistics (and running statistics updated) when
    /// training; with running statistics otherwise (the analyzer's mode,
    /// `model.eval()` in PyTorch).
    training: AtomicBool,
}

impl Cnn {
    pub fn new(spec: &CnnSpec, frame: &Frame, layout: &Layout, w: &mut Weights) -> Result<Self> {
        let CnnSpec { conv, adaptive_pool, dropout, .. } = spec;
        let mut descs = layout.layers.iter();
        let mut features = Vec::new();
        for item in conv {
            features.push(match item {
                ConvItem::Conv(_) => {
                    let d = descs.next().expect("one layer per conv entry");
                    let conv = Conv2d::new(d, w)?;
                    let bn = d.norm.as_deref().map(|bn| batch_norm(w, bn, d.weight_shape[0])).transpose()?;
                    Feature::Conv(conv, bn, frame.activation(d.tap.expect("convs feed taps")))
                }
                ConvItem::Pool(_) => Feature::MaxPool,
            });
        }
        let rest: Vec<_> = descs.collect();
        let (head, dense) = rest.split_last().expect("a model has a head");
        Ok(Cnn {
            features,
            adaptive_pool: *adaptive_pool,
            dropout: dropout.filter(|&p| p > 0.0),
            dropout_key: AtomicU64::new(0),
            classifier: dense
                .iter()
                .map(|d| Ok((Dense::new(d, w)?, frame.activation(d.tap.expect("dense layers feed taps")))))
                .collect::<Result<_>>()?,
            head: Dense::new(head, w)?,
            leaky_slope: frame.leaky_relu_slope,
            training: AtomicBool::new(false),
        })
    }

    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed);
    }

    pub fn set_dropout_key(&self, key: u64) {
        self.dropout_key.store(key, Ordering::Relaxed);
    }

    /// Inverted dropout of classifier layer `i`'s activation: a Bernoulli
    /// mask drawn on the CPU from (key, layer), scaled by 1/(1 − p).
    fn drop(&self, i: usize, a: Tensor) -> Result<Tensor> {
        match self.dropout.filter(|_| self.training.load(Ordering::Relaxed)) {
            Some(p) => dropout(&a, p, self.dropout_key.load(Ordering::Relaxed), i),
            None => Ok(a),
        }
    }

    pub fn forward(&self, start: Start<'_>, taps: &mut Taps) -> Result<Tensor> {
        let mut h = start.input().cloned();
        let mut tap = 0;
        for f in &self.features {
            match f {
                Feature::Conv(conv, bn, act) => {
                    let train = self.training.load(Ordering::Relaxed);
                    h = block(start, tap, h, taps, *act, self.leaky_slope, |x| {
                        let z = conv.forward(x)?;
                        Ok(match bn {
                            Some(bn) => ops::batch_norm(bn, &z, train)?,
                            None => z,
                        })
                    })?;
                    tap += 1;
                }
                // Pools before the start tap belong to what is skipped.
                Feature::MaxPool => h = h.map(|x| ops::max_pool2d(&x, 2)).transpose()?,
            }
        }
        if let Some(side) = self.adaptive_pool {
            h = h.map(|x| adaptive_avg_pool(&x, side)).transpose()?;
        }
        h = h.map(|x| x.flatten_from(1)).transpose()?;
        for (i, (dense, act)) in self.classifier.iter().enumerate() {
            h = block(start, tap, h, taps, *act, self.leaky_slope, |x| dense.forward(x))?;
            h = h.map(|a| self.drop(i, a)).transpose()?;
            tap += 1;
        }
        self.head.forward(current(&h))
    }
}
