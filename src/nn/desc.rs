//! The description every architecture gives of itself: its affine layers,
//! taps, residual blocks and sublayers, attention layers and other tensors,
//! in PyTorch's names. The analyzers, the trainer's initialisation and the
//! checkpoint checks read these, never an architecture's own fields.

use analyzers::{ActivationKind, LayerKind};
use serde::{Deserialize, Serialize};

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

/// Everything an architecture's walk yields, in forward order.
pub struct Layout {
    pub layers: Vec<LayerDesc>,
    pub taps: Vec<TapDesc>,
    pub extras: Vec<ExtraTensor>,
    /// A ResNet's residual blocks, or a transformer's sublayers and blocks.
    pub blocks: Vec<ResidualBlockDesc>,
    pub attention: Vec<AttentionDesc>,
}

/// A dense layer applied at each of `t` positions, [out, in] weight.
pub fn token_dense(name: String, out: usize, inp: usize, bias: bool, t: usize) -> LayerDesc {
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
pub fn stream_map(name: String, kind: &'static str, tap: usize, shape: [usize; 2], streams: (usize, usize)) -> ResidualBlockDesc {
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

/// Output size of a convolution or pool along one dimension.
pub fn conv_out(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding).saturating_sub(kernel) / stride + 1
}

/// What every architecture reads of a spec besides its own fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Per-sample input shape: [features], [channels, height, width] or [context].
    pub input_shape: Vec<usize>,
    pub num_classes: usize,
    /// The nonlinearity of every tap, `linear_taps` applied.
    pub activations: Vec<Activation>,
    pub leaky_relu_slope: f64,
}

impl Frame {
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }
    /// Tap `l`'s nonlinearity.
    pub fn activation(&self, l: usize) -> Activation {
        self.activations[l]
    }
}

/// A dense layer [out, in] with a bias, fed by a per-sample vector.
pub fn dense(name: String, out: usize, inp: usize) -> LayerDesc {
    LayerDesc {
        name,
        kind: LayerKind::Dense,
        weight_shape: vec![out, inp],
        tap: None,
        bias: true,
        stride: 1,
        padding: 0,
        norm: None,
        in_shape: vec![inp],
    }
}

impl Layout {
    pub fn empty() -> Layout {
        Layout { layers: vec![], taps: vec![], extras: vec![], blocks: vec![], attention: vec![] }
    }

    /// Appends tap `taps.len()`, fed by `layer`: `z_name` produces its z (the
    /// layer itself, or its BatchNorm), `module` is the activation module.
    pub fn push_tap(&mut self, frame: &Frame, layer: LayerDesc, z_name: String, module: String, shape: Vec<usize>) -> usize {
        let index = self.taps.len();
        self.taps.push(TapDesc {
            index,
            layer_name: z_name,
            module_name: module,
            layer_kind: layer.kind,
            activation: frame.activation(index),
            shape,
        });
        self.layers.push(LayerDesc { tap: Some(index), ..layer });
        index
    }
}

/// Sizes a spec asks for, checked before anything is allocated or
/// multiplied unchecked: a hostile or mistyped spec must not ask for
/// terabytes (at most [`MAX_ELEMENTS`] parameters, or values per sample at
/// one layer).
#[derive(Debug, Default)]
pub struct SizeGuard {
    params: u64,
}

impl SizeGuard {
    pub fn too_big(what: &str) -> String {
        format!("{what} overflows or exceeds {MAX_ELEMENTS} values (256 GiB in f32): refused before allocating")
    }

    /// a · b, unless it overflows or exceeds [`MAX_ELEMENTS`].
    pub fn mul(a: u64, b: usize) -> Option<u64> {
        a.checked_mul(b as u64).filter(|&n| n <= MAX_ELEMENTS)
    }

    /// The product of a shape's sides, or the error naming `what`.
    pub fn elements(shape: &[usize], what: &str) -> Result<u64, String> {
        shape.iter().try_fold(1u64, |a, &d| Self::mul(a, d)).ok_or_else(|| Self::too_big(what))
    }

    /// Counts `n` parameters (`None`: its own computation overflowed).
    pub fn add(&mut self, n: Option<u64>, what: &str) -> Result<(), String> {
        self.params = n.and_then(|n| self.params.checked_add(n)).filter(|&p| p <= MAX_ELEMENTS).ok_or_else(|| Self::too_big(what))?;
        Ok(())
    }

    /// Dense layers of `widths` from `inputs` features, then the output layer.
    pub fn dense(&mut self, inputs: u64, widths: &[usize], classes: usize) -> Result<(), String> {
        let mut prev = inputs;
        for &w in widths {
            self.add(Self::mul(prev, w).and_then(|n| n.checked_add(w as u64)), "a dense layer")?;
            prev = w as u64;
        }
        self.add(prev.checked_mul(classes as u64).and_then(|n| n.checked_add(classes as u64)), "the output layer")
    }

    /// Every tensor and feature map of a layout whose own arithmetic cannot
    /// overflow (its architecture bounded widths and depths first).
    pub fn layout(&mut self, l: &Layout) -> Result<(), String> {
        for layer in &l.layers {
            self.add(Self::elements(&layer.weight_shape, "a layer").ok(), "a layer")?;
        }
        for e in &l.extras {
            self.add(Self::elements(&e.shape, "an embedding").ok(), "an embedding")?;
        }
        for t in &l.taps {
            Self::elements(&t.shape, "a feature map")?;
        }
        Ok(())
    }
}
