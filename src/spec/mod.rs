//! The model spec: a JSON document that fully describes an architecture, so
//! that a checkpoint (which carries it in its metadata) is enough to rebuild
//! its model. See docs/model-spec.md for the format and the PyTorch mapping.

mod hf;
pub mod presets;
mod transformer;

pub use hf::{Family, HfArch, HfNames, Norm, Positions, Residual};
pub use transformer::{block_names, AttentionDesc, BlockNames, ExtraInit, ExtraTensor};

use analyzers::{ActivationKind, LayerKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

pub const SPEC_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    LeakyRelu,
    Gelu,
    /// GELU's tanh approximation (GPT-2's `gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// x·sigmoid(x) (SiLU, "swish"): the gate of Llama-style MLPs.
    Silu,
    Tanh,
    Identity,
}

impl Activation {
    pub fn parse(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.replace('-', "_")))
            .map_err(|_| format!("unknown activation '{s}' (expected relu, leaky_relu, gelu, gelu_tanh, silu, tanh or identity)"))
    }
    pub fn kind(self) -> ActivationKind {
        match self {
            Activation::Relu => ActivationKind::Relu,
            Activation::LeakyRelu => ActivationKind::LeakyRelu,
            Activation::Gelu => ActivationKind::Gelu,
            Activation::GeluTanh => ActivationKind::GeluTanh,
            Activation::Silu => ActivationKind::Silu,
            Activation::Tanh => ActivationKind::Tanh,
            Activation::Identity => ActivationKind::Identity,
        }
    }
}

/// One entry of a CNN's `conv` list: a conv layer's output channels, or "M"
/// for a 2×2 max-pool (the torchvision VGG convention).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConvItem {
    Conv(usize),
    Pool(PoolMarker),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolMarker {
    M,
}

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Arch {
    /// Flatten, then `hidden.len()` dense layers each followed by a tap, then
    /// a dense head.
    Mlp { hidden: Vec<usize> },
    /// A VGG-style conv stack (3×3 "same" convs, each followed by a tap, and
    /// 2×2 max-pools), flatten, dense layers with taps, dense head. With
    /// `batch_norm`, a BatchNorm after every conv, as torchvision's VGG-BN:
    /// conv `features.i`, BatchNorm `features.i+1`, σ `features.i+2`.
    Cnn {
        conv: Vec<ConvItem>,
        kernel_size: usize,
        dense: Vec<usize>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        batch_norm: bool,
        /// torchvision's VGG: an adaptive average pool to `s × s` after the
        /// features (`avgpool`), so the classifier's input is fixed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        adaptive_pool: Option<usize>,
        /// torchvision's VGG classifier: Linear, ReLU, Dropout(p) per dense
        /// layer (`classifier.0`, `.3`, `.6`); dropout acts in training only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dropout: Option<f64>,
    },
    /// A residual network with BatchNorm after every convolution
    /// (torchvision's `ResNet` layout and names: `conv1`, `bn1`,
    /// `layerS.B.convI`/`bnI`, `layerS.B.downsample.0/1`, `fc`). Stage `S`
    /// has `stages[S]` blocks of width `widths[S]`; its first block has
    /// stride 2 except in the first stage. Global average pool, then `fc`.
    Resnet { block: ResBlock, stages: Vec<usize>, widths: Vec<usize>, stem: Stem, stem_width: usize, shortcut: Shortcut },
    /// A vision transformer (Dosovitskiy et al., 2021) in timm's
    /// `VisionTransformer` layout and names: a `patch`×`patch` convolution
    /// with that stride (`patch_embed.proj`), a class token, a learned
    /// position embedding, `depth` pre-LayerNorm blocks (multi-head
    /// self-attention, then an MLP whose nonlinearity is the block's tap),
    /// a final LayerNorm (`norm`) and a linear `head` on the class token.
    /// LayerNorm eps 1e-6 (timm's), biases everywhere.
    Vit {
        patch: usize,
        dim: usize,
        depth: usize,
        heads: usize,
        mlp_hidden: usize,
        /// Dropout on attention weights and sublayer outputs (training only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dropout: Option<f64>,
    },
    /// A decoder-only transformer in nanoGPT's layout and names: token and
    /// position embeddings (`transformer.wte`, `.wpe`), `depth` pre-LayerNorm
    /// blocks with causal self-attention (`transformer.h.N`), a final
    /// LayerNorm (`transformer.ln_f`) and `lm_head` (or the token embedding,
    /// `tied`). The input is a window of token ids (`input_shape` [T]). With
    /// `layer_norm: false` the LayerNorms are left out (the one-layer
    /// modular-addition model of Nanda et al., 2023). LayerNorm eps 1e-5.
    Gpt {
        vocab: usize,
        dim: usize,
        depth: usize,
        heads: usize,
        mlp_hidden: usize,
        #[serde(default = "yes")]
        layer_norm: bool,
        /// Biases in the linear layers and LayerNorms (nanoGPT's `bias`).
        #[serde(default = "yes")]
        bias: bool,
        /// `lm_head` shares the token embedding's weights (GPT-2).
        #[serde(default)]
        tied: bool,
        /// Dropout on embeddings, attention weights and sublayer outputs
        /// (training only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dropout: Option<f64>,
        /// A language model: next-token logits at every position (one
        /// prediction per (window, position), `num_classes` = `vocab`), as
        /// nanoGPT trains. Otherwise the last position classifies the window.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        lm: bool,
    },
    /// A Hugging Face decoder-only language model (GPT-NeoX/Pythia, GPT-2,
    /// Llama, OLMo, OLMo-2) in `transformers`' names, read from its own
    /// `config.json` (`hf::config`); `input_shape` is [context] and
    /// `num_classes` the embedding's rows. See `spec/hf.rs`.
    HfCausalLm(HfArch),
}

fn yes() -> bool {
    true
}

impl Arch {
    /// The named residual networks: CIFAR ResNets (He et al., 2016, §4.2:
    /// 6n+2 layers, widths 16/32/64, shortcut A) and torchvision's.
    pub fn preset(name: &str) -> Option<Arch> {
        let cifar = |n: usize| Arch::Resnet {
            block: ResBlock::Basic,
            stages: vec![n; 3],
            widths: vec![16, 32, 64],
            stem: Stem::Small,
            stem_width: 16,
            shortcut: Shortcut::A,
        };
        let tv = |block: ResBlock, stages: [usize; 4]| Arch::Resnet {
            block,
            stages: stages.to_vec(),
            widths: vec![64, 128, 256, 512],
            stem: Stem::Imagenet,
            stem_width: 64,
            shortcut: Shortcut::B,
        };
        // torchvision's VGG configurations A, B and D.
        let vgg = |cfg: &str, bn: bool| {
            let conv = cfg
                .split(',')
                .map(|c| match c {
                    "M" => ConvItem::Pool(PoolMarker::M),
                    n => ConvItem::Conv(n.parse().expect("a channel count")),
                })
                .collect();
            Arch::Cnn { conv, kernel_size: 3, dense: vec![4096, 4096], batch_norm: bn, adaptive_pool: Some(7), dropout: Some(0.5) }
        };
        const A: &str = "64,M,128,M,256,256,M,512,512,M,512,512,M";
        const B: &str = "64,64,M,128,128,M,256,256,M,512,512,M,512,512,M";
        const D: &str = "64,64,M,128,128,M,256,256,256,M,512,512,512,M,512,512,512,M";
        Some(match name {
            "vgg11" => vgg(A, false),
            "vgg11_bn" => vgg(A, true),
            "vgg13" => vgg(B, false),
            "vgg13_bn" => vgg(B, true),
            "vgg16" => vgg(D, false),
            "vgg16_bn" => vgg(D, true),
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

/// A convolutional map from per-sample input [c, h, w] to output [c', h', w'].
fn conv_geometry(input: &[usize], output: &[usize], kernel: usize, stride: usize, padding: usize) -> analyzers::BlockGeometry {
    analyzers::BlockGeometry::Conv {
        in_channels: input[0],
        height: input[1],
        width: input[2],
        kernel,
        stride,
        padding,
        out_channels: output[0],
        out_height: output[1],
        out_width: output[2],
    }
}

/// Output size of a convolution or pool along one dimension.
pub fn conv_out(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding).saturating_sub(kernel) / stride + 1
}

/// One residual block: its taps, shapes and shortcut, for the analyzers
/// (`residual_linear_fit`) and for resuming a pass inside it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResidualBlockDesc {
    /// e.g. `layer2.1`.
    pub name: String,
    /// Its first and last tap (the last is after the residual addition).
    pub first_tap: usize,
    pub last_tap: usize,
    /// Per-sample [channels, h, w] of the block's input and output.
    pub in_shape: Vec<usize>,
    pub out_shape: Vec<usize>,
    pub stride: usize,
    /// Side of the receptive field of one output position on the block's
    /// input: two stacked 3×3 convolutions see 5×5, a bottleneck 3×3.
    pub receptive_field: usize,
    /// The shortcut is the identity (same shape, no projection or padding).
    pub identity_shortcut: bool,
    /// `residual_block`, or for a transformer `attention_sublayer`,
    /// `mlp_sublayer` or `transformer_block` (the `layer_kind` column).
    pub kind: &'static str,
    /// A transformer's sublayer maps residual stream `from` to stream `to`
    /// (the model records the streams); a ResNet block maps its first tap's
    /// block input to its last tap's activation.
    pub streams: Option<(usize, usize)>,
}

// No deny_unknown_fields: serde does not support it together with flatten.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub spec_version: u32,
    #[serde(flatten)]
    pub arch: Arch,
    /// Per-sample input shape: [features] or [channels, height, width].
    pub input_shape: Vec<usize>,
    pub num_classes: usize,
    /// The activation of every tap unless `tap_activations` says otherwise.
    pub activation: Activation,
    #[serde(default)]
    pub tap_activations: Option<Vec<Activation>>,
    #[serde(default = "default_slope")]
    pub leaky_relu_slope: f64,
    /// Taps whose nonlinearity is replaced by the identity (partly linear
    /// models of Pinson et al., 2024).
    #[serde(default)]
    pub linear_taps: BTreeSet<usize>,
}

fn default_slope() -> f64 {
    0.01
}

/// One affine layer of the model, in PyTorch naming.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerDesc {
    /// Module path, e.g. `features.0`; tensors are `<name>.weight`, `<name>.bias`.
    pub name: String,
    pub kind: LayerKind,
    /// [out, in] or [out, in, kh, kw].
    pub weight_shape: Vec<usize>,
    /// The tap this layer feeds, `None` for the head (and a projection shortcut).
    pub tap: Option<usize>,
    /// Whether the layer has a `<name>.bias` (convolutions before a
    /// BatchNorm in a ResNet have none).
    pub bias: bool,
    pub stride: usize,
    pub padding: usize,
    /// The BatchNorm that follows it, if any.
    pub norm: Option<String>,
    /// Per-sample shape of what the layer receives.
    pub in_shape: Vec<usize>,
}

/// One step of a ResNet's walk: a convolution feeding a tap, or a
/// projection shortcut.
#[derive(Debug, Clone)]
enum ResnetStep {
    Tap { layer: LayerDesc, z_name: String, module: String, shape: Vec<usize> },
    Projection(LayerDesc),
}

impl LayerDesc {
    pub fn fan_in(&self) -> usize {
        self.weight_shape[1..].iter().product()
    }
    pub fn fan_out(&self) -> usize {
        self.weight_shape[0] * self.weight_shape[2..].iter().product::<usize>()
    }
}

/// One nonlinearity of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct TapDesc {
    pub index: usize,
    /// The affine layer feeding it (the `layer_name` column).
    pub layer_name: String,
    /// The activation module's own path, e.g. `features.1`.
    pub module_name: String,
    pub layer_kind: LayerKind,
    /// The effective activation (identity for linear taps).
    pub activation: Activation,
    /// Per-sample shape of z and a: [units] or [channels, h, w].
    pub shape: Vec<usize>,
}

impl TapDesc {
    pub fn units(&self) -> usize {
        self.shape.iter().product()
    }
}

/// BatchNorm's running statistics: state saved with the weights, not trained.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// The most parameters, or values per sample at one layer, a spec may ask for.
pub const MAX_ELEMENTS: u64 = 1 << 36;

impl ModelSpec {
    pub fn from_json(text: &str) -> Result<Self, String> {
        let spec: ModelSpec = serde_json::from_str(text).map_err(|e| format!("malformed model spec: {e}"))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a spec always serialises")
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.spec_version != SPEC_VERSION {
            return Err(format!("spec_version {} is not supported (this lintrace reads version {SPEC_VERSION})", self.spec_version));
        }
        if self.num_classes < 2 {
            return Err(format!("num_classes must be at least 2, got {}", self.num_classes));
        }
        if self.input_shape.is_empty() || self.input_shape.contains(&0) {
            return Err(format!("input_shape {:?} must be non-empty and positive", self.input_shape));
        }
        match &self.arch {
            Arch::Mlp { hidden } => {
                if hidden.contains(&0) {
                    return Err("mlp hidden widths must be positive".into());
                }
            }
            Arch::Cnn { conv, kernel_size, dense, .. } => {
                if self.input_shape.len() != 3 {
                    return Err(format!("a cnn needs input_shape [channels, height, width], got {:?}", self.input_shape));
                }
                if *kernel_size == 0 || kernel_size % 2 == 0 {
                    return Err(format!("kernel_size must be odd (\"same\" padding), got {kernel_size}"));
                }
                if conv.iter().any(|c| *c == ConvItem::Conv(0)) || dense.contains(&0) {
                    return Err("cnn widths must be positive".into());
                }
                if let Arch::Cnn { adaptive_pool, dropout, .. } = &self.arch {
                    if matches!(adaptive_pool, Some(s) if *s == 0 || *s > 1 << 12) {
                        return Err("adaptive_pool must be between 1 and 4096".into());
                    }
                    if matches!(dropout, Some(p) if !(0.0..1.0).contains(p)) {
                        return Err("dropout must be in [0, 1)".into());
                    }
                }
                let (mut h, mut w) = (self.input_shape[1], self.input_shape[2]);
                for item in conv {
                    if let ConvItem::Pool(_) = item {
                        if h < 2 || w < 2 {
                            return Err(format!("max-pool on a {h}×{w} map: too many \"M\" entries"));
                        }
                        h /= 2;
                        w /= 2;
                    }
                }
            }
            Arch::Resnet { block, stages, widths, stem_width, shortcut, .. } => {
                if self.input_shape.len() != 3 {
                    return Err(format!("a resnet needs input_shape [channels, height, width], got {:?}", self.input_shape));
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
            }
            Arch::Vit { .. } | Arch::Gpt { .. } => self.validate_transformer()?,
            Arch::HfCausalLm(hf) => {
                if self.input_shape.len() != 1 {
                    return Err(format!("a language model needs input_shape [context], got {:?}", self.input_shape));
                }
                hf.check(self.input_shape[0])?;
                if self.num_classes != hf.vocab {
                    return Err(format!(
                        "a language model predicts tokens: num_classes must be vocab ({} ≠ {})",
                        self.num_classes, hf.vocab
                    ));
                }
            }
        }
        let taps = self.num_taps();
        if let Some(list) = &self.tap_activations {
            if list.len() != taps {
                return Err(format!("tap_activations has {} entries but the model has {taps} taps", list.len()));
            }
        }
        if let Some(&bad) = self.linear_taps.iter().find(|&&t| t >= taps) {
            return Err(format!("linear_taps names tap {bad} but the model has {taps} taps (0..{})", taps.saturating_sub(1)));
        }
        if !(self.leaky_relu_slope.is_finite()) {
            return Err("leaky_relu_slope must be finite".into());
        }
        self.size_guard()
    }

    /// Refuses, before anything is allocated or multiplied unchecked, a spec
    /// whose sizes overflow or exceed [`MAX_ELEMENTS`] parameters or values
    /// per sample at a layer (a hostile or mistyped spec must not ask for
    /// terabytes).
    fn size_guard(&self) -> Result<(), String> {
        let too_big = |what: &str| format!("{what} overflows or exceeds {MAX_ELEMENTS} values (256 GiB in f32): refused before allocating");
        let mul = |a: u64, b: usize| a.checked_mul(b as u64).filter(|&n| n <= MAX_ELEMENTS);
        let input = self.input_shape.iter().try_fold(1u64, |a, &d| mul(a, d)).ok_or_else(|| too_big("input_shape"))?;
        let classes = self.num_classes as u64;
        let mut params: u64 = 0;
        let mut add = |n: Option<u64>, what: &str| -> Result<(), String> {
            params = n.and_then(|n| params.checked_add(n)).filter(|&p| p <= MAX_ELEMENTS).ok_or_else(|| too_big(what))?;
            Ok(())
        };
        let dense = |add: &mut dyn FnMut(Option<u64>, &str) -> Result<(), String>, inputs: u64, widths: &[usize]| {
            let mut prev = inputs;
            for &w in widths {
                add(mul(prev, w).and_then(|n| n.checked_add(w as u64)), "a dense layer")?;
                prev = w as u64;
            }
            add(prev.checked_mul(classes).and_then(|n| n.checked_add(classes)), "the output layer")
        };
        match &self.arch {
            Arch::Mlp { hidden } => dense(&mut add, input, hidden)?,
            Arch::Cnn { conv, kernel_size, dense: widths, .. } => {
                let (mut c, mut h, mut w) = (self.input_shape[0] as u64, self.input_shape[1], self.input_shape[2]);
                for item in conv {
                    match item {
                        ConvItem::Conv(out) => {
                            let k2 = mul(1, *kernel_size).and_then(|k| mul(k, *kernel_size));
                            add(k2.and_then(|k| mul(k, *out)).and_then(|n| n.checked_mul(c)), "a convolution")?;
                            mul(*out as u64, h).and_then(|n| mul(n, w)).ok_or_else(|| too_big("a convolution's output"))?;
                            c = *out as u64;
                        }
                        ConvItem::Pool(_) => {
                            h /= 2;
                            w /= 2;
                        }
                    }
                }
                if let Arch::Cnn { adaptive_pool: Some(side), .. } = &self.arch {
                    (h, w) = (*side, *side);
                }
                let flat = mul(c, h).and_then(|n| mul(n, w)).ok_or_else(|| too_big("the flattened features"))?;
                dense(&mut add, flat, widths)?;
            }
            Arch::Resnet { .. } | Arch::Vit { .. } | Arch::Gpt { .. } | Arch::HfCausalLm(_) => {
                // validate() bounded widths and depths, so the walk's own
                // arithmetic cannot overflow; its sizes are checked here.
                for l in self.layers() {
                    add(l.weight_shape.iter().try_fold(1u64, |a, &d| mul(a, d)), "a layer")?;
                }
                for e in self.extra_tensors() {
                    add(e.shape.iter().try_fold(1u64, |a, &d| mul(a, d)), "an embedding")?;
                }
                for t in self.taps() {
                    t.shape.iter().try_fold(1u64, |a, &d| mul(a, d)).ok_or_else(|| too_big("a feature map"))?;
                }
            }
        }
        Ok(())
    }

    pub fn num_taps(&self) -> usize {
        match &self.arch {
            Arch::Mlp { hidden } => hidden.len(),
            Arch::Cnn { conv, dense, .. } => conv.iter().filter(|c| matches!(c, ConvItem::Conv(_))).count() + dense.len(),
            Arch::Resnet { block, stages, .. } => {
                let per_block = match block {
                    ResBlock::Basic => 2,
                    ResBlock::Bottleneck => 3,
                };
                1 + stages.iter().fold(0usize, |a, &n| a.saturating_add(n)).saturating_mul(per_block)
            }
            Arch::Vit { depth, .. } | Arch::Gpt { depth, .. } => *depth,
            Arch::HfCausalLm(hf) => hf.depth,
        }
    }

    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// The nonlinearity at tap `l` after `linear_taps` is applied.
    pub fn tap_activation(&self, l: usize) -> Activation {
        if self.linear_taps.contains(&l) {
            return Activation::Identity;
        }
        match &self.tap_activations {
            Some(list) => list[l],
            None => self.activation,
        }
    }

    /// Every affine layer in forward order, with PyTorch module names.
    pub fn layers(&self) -> Vec<LayerDesc> {
        self.walk().0
    }

    /// Every tap in forward order.
    pub fn taps(&self) -> Vec<TapDesc> {
        self.walk().1
    }

    fn walk(&self) -> (Vec<LayerDesc>, Vec<TapDesc>) {
        let mut layers = Vec::new();
        let mut taps = Vec::new();
        // `z_name`: the module that produces z (docs/metrics.md: the layer itself,
        // or its BatchNorm); `module`: the activation module's path.
        let push_tap =
            |layers: &mut Vec<LayerDesc>, taps: &mut Vec<TapDesc>, layer: LayerDesc, z_name: String, module: String, shape: Vec<usize>| {
                let index = taps.len();
                taps.push(TapDesc {
                    index,
                    layer_name: z_name,
                    module_name: module,
                    layer_kind: layer.kind,
                    activation: self.tap_activation(index),
                    shape,
                });
                layers.push(LayerDesc { tap: Some(index), ..layer });
            };
        let dense = |name: String, out: usize, inp: usize| LayerDesc {
            name,
            kind: LayerKind::Dense,
            weight_shape: vec![out, inp],
            tap: None,
            bias: true,
            stride: 1,
            padding: 0,
            norm: None,
            in_shape: vec![inp],
        };
        let classes = self.num_classes;
        match &self.arch {
            Arch::Mlp { hidden } => {
                let mut prev = self.input_len();
                for (i, &w) in hidden.iter().enumerate() {
                    let layer = dense(format!("layers.{}", 2 * i), w, prev);
                    push_tap(&mut layers, &mut taps, layer.clone(), layer.name, format!("layers.{}", 2 * i + 1), vec![w]);
                    prev = w;
                }
                layers.push(dense(format!("layers.{}", 2 * hidden.len()), classes, prev));
            }
            Arch::Cnn { conv, kernel_size, dense: widths, batch_norm, adaptive_pool, dropout } => {
                let (mut c, mut h, mut w) = (self.input_shape[0], self.input_shape[1], self.input_shape[2]);
                let mut idx = 0;
                let bn = usize::from(*batch_norm);
                for item in conv {
                    match item {
                        ConvItem::Conv(out) => {
                            // docs/metrics.md: the tap's layer is the module that
                            // produces z, with BatchNorm the BatchNorm.
                            let norm = batch_norm.then(|| format!("features.{}", idx + 1));
                            let layer = LayerDesc {
                                name: format!("features.{idx}"),
                                kind: LayerKind::Conv2d,
                                weight_shape: vec![*out, c, *kernel_size, *kernel_size],
                                tap: None,
                                bias: true,
                                stride: 1,
                                padding: kernel_size / 2,
                                norm: norm.clone(),
                                in_shape: vec![c, h, w],
                            };
                            let z_name = norm.unwrap_or_else(|| layer.name.clone());
                            push_tap(&mut layers, &mut taps, layer, z_name, format!("features.{}", idx + 1 + bn), vec![*out, h, w]);
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
                if let Some(side) = adaptive_pool {
                    (h, w) = (*side, *side);
                }
                // torchvision's VGG puts a Dropout after each ReLU: 3 modules per layer.
                let per = if dropout.is_some() { 3 } else { 2 };
                let mut prev = c * h * w;
                for (i, &d) in widths.iter().enumerate() {
                    let layer = dense(format!("classifier.{}", per * i), d, prev);
                    push_tap(&mut layers, &mut taps, layer.clone(), layer.name, format!("classifier.{}", per * i + 1), vec![d]);
                    prev = d;
                }
                layers.push(dense(format!("classifier.{}", per * widths.len()), classes, prev));
            }
            Arch::Resnet { .. } => {
                let (steps, _, out) = self.resnet_layout();
                for step in steps {
                    match step {
                        ResnetStep::Tap { layer, z_name, module, shape } => push_tap(&mut layers, &mut taps, layer, z_name, module, shape),
                        ResnetStep::Projection(layer) => layers.push(layer),
                    }
                }
                layers.push(dense("fc".into(), classes, out[0]));
            }
            Arch::Vit { .. } | Arch::Gpt { .. } | Arch::HfCausalLm(_) => {
                let l = self.transformer_layout();
                return (l.layers, l.taps);
            }
        }
        (layers, taps)
    }

    /// The residual blocks, in forward order (empty for other architectures).
    /// Residual blocks (ResNets), or a transformer's sublayers and blocks.
    pub fn residual_blocks(&self) -> Vec<ResidualBlockDesc> {
        match self.arch {
            Arch::Resnet { .. } => self.resnet_layout().1,
            Arch::Vit { .. } | Arch::Gpt { .. } | Arch::HfCausalLm(_) => self.transformer_layout().sublayers,
            _ => Vec::new(),
        }
    }

    /// Tensors other than affine layers' weights and biases: embeddings,
    /// class token and LayerNorms (transformers only).
    pub fn extra_tensors(&self) -> Vec<ExtraTensor> {
        self.transformer_layout().extras
    }

    /// The self-attention layers (transformers only).
    pub fn attention_layers(&self) -> Vec<AttentionDesc> {
        self.transformer_layout().attention
    }

    /// Names of tensors AdamW does not decay: biases, norms and embeddings.
    pub fn no_decay(&self, name: &str) -> bool {
        name.ends_with(".bias")
            || self.batch_norms().iter().any(|(bn, _)| name.starts_with(&format!("{bn}.")))
            || self.extra_tensors().iter().any(|e| e.name == name)
    }

    /// A ResNet's convolutions in forward order (torchvision's order within a
    /// block: conv1, conv2, [conv3], downsample.0), each feeding a tap except
    /// projection shortcuts (`fc` not included); its residual blocks; and the
    /// per-sample shape [c, h, w] after the last block.
    fn resnet_layout(&self) -> (Vec<ResnetStep>, Vec<ResidualBlockDesc>, Vec<usize>) {
        let Arch::Resnet { block, stages, widths, stem, stem_width, shortcut } = &self.arch else {
            return (Vec::new(), Vec::new(), Vec::new());
        };
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
        let mut steps = Vec::new();
        let mut blocks = Vec::new();
        let n_taps = |steps: &[ResnetStep]| steps.iter().filter(|s| matches!(s, ResnetStep::Tap { .. })).count();
        // Pushes a tap, returns its index.
        let tap = |steps: &mut Vec<ResnetStep>, layer: LayerDesc, module: String, shape: Vec<usize>| {
            let z_name = layer.norm.clone().expect("resnet convs have a norm");
            steps.push(ResnetStep::Tap { layer, z_name, module, shape });
            n_taps(steps) - 1
        };
        let (k, s, p) = match stem {
            Stem::Small => (3, 1, 1),
            Stem::Imagenet => (7, 2, 3),
        };
        let mut x = self.input_shape.clone();
        let y = out_shape(*stem_width, &x, k, s, p);
        tap(&mut steps, conv("conv1".into(), *stem_width, &x, k, s, p, "bn1".into()), "relu".into(), y.clone());
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
                            &mut steps,
                            conv(format!("{name}.conv1"), planes, &h, 3, stride, 1, format!("{name}.bn1")),
                            relu.clone(),
                            y.clone(),
                        );
                        h = y;
                        let y = out_shape(planes, &h, 3, 1, 1);
                        tap(&mut steps, conv(format!("{name}.conv2"), planes, &h, 3, 1, 1, format!("{name}.bn2")), relu.clone(), y.clone());
                        h = y;
                    }
                    ResBlock::Bottleneck => {
                        let y = out_shape(planes, &h, 1, 1, 0);
                        first = tap(
                            &mut steps,
                            conv(format!("{name}.conv1"), planes, &h, 1, 1, 0, format!("{name}.bn1")),
                            relu.clone(),
                            y.clone(),
                        );
                        h = y;
                        let y = out_shape(planes, &h, 3, stride, 1);
                        tap(
                            &mut steps,
                            conv(format!("{name}.conv2"), planes, &h, 3, stride, 1, format!("{name}.bn2")),
                            relu.clone(),
                            y.clone(),
                        );
                        h = y;
                        let y = out_shape(out_c, &h, 1, 1, 0);
                        tap(&mut steps, conv(format!("{name}.conv3"), out_c, &h, 1, 1, 0, format!("{name}.bn3")), relu.clone(), y.clone());
                        h = y;
                    }
                }
                let changes = stride != 1 || block_in[0] != out_c;
                if changes && *shortcut == Shortcut::B {
                    steps.push(ResnetStep::Projection(conv(
                        format!("{name}.downsample.0"),
                        out_c,
                        &block_in,
                        1,
                        stride,
                        0,
                        format!("{name}.downsample.1"),
                    )));
                }
                blocks.push(ResidualBlockDesc {
                    name,
                    first_tap: first,
                    last_tap: n_taps(&steps) - 1,
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
        (steps, blocks, x)
    }

    /// Every tensor of a checkpoint: (name, shape), weights then biases per
    /// layer, then the BatchNorms' parameters and running statistics.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out: Vec<(String, Vec<usize>)> = Vec::new();
        for l in self.layers() {
            out.push((format!("{}.weight", l.name), l.weight_shape.clone()));
            if l.bias {
                out.push((format!("{}.bias", l.name), vec![l.weight_shape[0]]));
            }
        }
        for (bn, c) in self.batch_norms() {
            out.extend(["weight", "bias", "running_mean", "running_var"].map(|t| (format!("{bn}.{t}"), vec![c])));
        }
        out.extend(self.extra_tensors().into_iter().map(|e| (e.name, e.shape)));
        out
    }

    /// Trainable parameters (BatchNorm's running statistics are buffers, not counted).
    pub fn num_parameters(&self) -> usize {
        self.tensor_shapes().iter().filter(|(n, _)| !is_buffer(n)).map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// The BatchNorm layers, (name, channels), in forward order.
    pub fn batch_norms(&self) -> Vec<(String, usize)> {
        self.layers().into_iter().filter_map(|l| l.norm.map(|n| (n, l.weight_shape[0]))).collect()
    }

    /// Per-sample shape of what each tap's affine layer receives, in tap order.
    pub fn block_input_shapes(&self) -> Vec<Vec<usize>> {
        self.layers().into_iter().filter(|l| l.tap.is_some()).map(|l| l.in_shape).collect()
    }

    /// The description the analyzers get, for a probe of `n_probe` samples.
    /// Predictions (rows of logits, labels) per sample: a language model's
    /// window has one per position, every other model one.
    pub fn predictions_per_sample(&self) -> usize {
        match self.arch {
            Arch::Gpt { lm: true, .. } | Arch::HfCausalLm(_) => self.positions(),
            _ => 1,
        }
    }

    pub fn model_info(&self, n_probe: usize) -> analyzers::ModelInfo {
        let layers: Vec<LayerDesc> = self.layers().into_iter().filter(|l| l.tap.is_some()).collect();
        analyzers::ModelInfo {
            taps: self
                .taps()
                .iter()
                .zip(&layers)
                .map(|(t, l)| {
                    let input = &l.in_shape;
                    let block = match t.layer_kind {
                        LayerKind::Conv2d => conv_geometry(input, &t.shape, l.weight_shape[2], l.stride, l.padding),
                        // A transformer's MLP: the same dense map at every position.
                        _ if input.len() == 2 => {
                            analyzers::BlockGeometry::Tokens { positions: input[0], in_features: input[1], out_features: t.shape[1] }
                        }
                        _ => analyzers::BlockGeometry::Dense { features: input[0] },
                    };
                    analyzers::TapInfo {
                        index: t.index,
                        activation: t.activation.kind(),
                        layer_kind: t.layer_kind,
                        units: t.units(),
                        input_units: input.iter().product(),
                        block,
                    }
                })
                .collect(),
            residual_blocks: self
                .residual_blocks()
                .into_iter()
                .map(|b| {
                    let k = b.receptive_field;
                    let block = match b.in_shape.len() {
                        2 => analyzers::BlockGeometry::Tokens {
                            positions: b.in_shape[0],
                            in_features: b.in_shape[1],
                            out_features: b.out_shape[1],
                        },
                        _ => conv_geometry(&b.in_shape, &b.out_shape, k, b.stride, k / 2),
                    };
                    analyzers::ResidualBlockInfo {
                        block,
                        name: b.name,
                        kind: b.kind,
                        first_tap: b.first_tap,
                        last_tap: b.last_tap,
                        identity_shortcut: b.identity_shortcut,
                        streams: b.streams,
                    }
                })
                .collect(),
            attention: self
                .attention_layers()
                .into_iter()
                .map(|a| analyzers::AttentionInfo { name: a.name, heads: a.heads, positions: a.positions, causal: a.causal, tap: a.tap })
                .collect(),
            num_classes: self.num_classes,
            n_probe,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cnn() -> ModelSpec {
        ModelSpec::from_json(
            r#"{"spec_version":1,"kind":"cnn","input_shape":[3,8,8],"num_classes":3,"conv":[4,"M",6,"M"],"kernel_size":3,"dense":[8],"activation":"relu","tap_activations":null,"leaky_relu_slope":0.01,"linear_taps":[1]}"#,
        )
        .unwrap()
    }

    #[test]
    fn cnn_names_follow_pytorch_sequential_indices() {
        let s = cnn();
        let names: Vec<String> = s.tensor_shapes().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "features.0.weight",
                "features.0.bias",
                "features.3.weight",
                "features.3.bias",
                "classifier.0.weight",
                "classifier.0.bias",
                "classifier.2.weight",
                "classifier.2.bias"
            ]
        );
        let taps = s.taps();
        assert_eq!(taps[1].shape, vec![6, 4, 4]);
        assert_eq!(taps[1].activation, Activation::Identity);
        assert_eq!(s.layers()[2].weight_shape, vec![8, 24]);
    }

    #[test]
    fn round_trips_through_json() {
        let s = cnn();
        assert_eq!(ModelSpec::from_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn rejects_bad_specs() {
        let bad = r#"{"spec_version":1,"kind":"mlp","input_shape":[4],"num_classes":2,"hidden":[3],"activation":"relu","linear_taps":[5]}"#;
        assert!(ModelSpec::from_json(bad).unwrap_err().contains("linear_taps names tap 5"));
        let unknown = r#"{"spec_version":1,"kind":"transformer","input_shape":[4],"num_classes":2,"activation":"relu"}"#;
        assert!(ModelSpec::from_json(unknown).unwrap_err().contains("malformed model spec"));
        assert!(Activation::parse("swish").is_err());
        assert_eq!(Activation::parse("leaky-relu").unwrap(), Activation::LeakyRelu);
    }
}
