//! What the driver hands to analyzers: a description of the model's taps and
//! chunks of captured values. Captured values are candle tensors on the
//! device the model runs on (a GPU where there is one), shaped
//! `[samples, *per-sample shape]` and borrowed from the driver, so no copy
//! is made per analyzer and the heavy math stays on that device.

use candle_core::Tensor;

/// The elementwise nonlinearity at a tap, as the analyzers need to know it.
/// A tap made linear (Pinson et al.'s partly linear models) reports `Identity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationKind {
    Relu,
    LeakyRelu,
    Gelu,
    GeluTanh,
    Silu,
    Tanh,
    Identity,
    /// Any other elementwise nonlinearity (sigmoid, hardswish, ELU, …): a
    /// model captured in PyTorch may use one lintrace has no kernel for.
    /// Unit fits treat every elementwise map alike; only the ReLU family
    /// has an on/off regime.
    Other,
}

impl ActivationKind {
    /// The ReLU family, where an on/off regime per unit is meaningful.
    pub fn is_relu_family(self) -> bool {
        matches!(self, ActivationKind::Relu | ActivationKind::LeakyRelu)
    }
}

/// The affine layer that feeds a tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Dense,
    Conv2d,
}

impl LayerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LayerKind::Dense => "dense",
            LayerKind::Conv2d => "conv2d",
        }
    }
}

/// The shape of a block: what its affine layer receives and how it maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockGeometry {
    Dense {
        features: usize,
    },
    Conv {
        in_channels: usize,
        height: usize,
        width: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        out_channels: usize,
        out_height: usize,
        out_width: usize,
    },
    /// The same dense map at every position of a sequence (a transformer's
    /// MLP layer, or a sublayer's map of the residual stream): values are
    /// laid out `[positions, features]` per sample and each (sample,
    /// position) pair is one regression row.
    Tokens {
        positions: usize,
        in_features: usize,
        out_features: usize,
    },
}

impl BlockGeometry {
    /// Values per sample of the map's input.
    pub fn input_units(&self) -> usize {
        match *self {
            BlockGeometry::Dense { features } => features,
            BlockGeometry::Conv { in_channels, height, width, .. } => in_channels * height * width,
            BlockGeometry::Tokens { positions, in_features, .. } => positions * in_features,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TapInfo {
    /// 0 is the shallowest nonlinearity.
    pub index: usize,
    pub activation: ActivationKind,
    pub layer_kind: LayerKind,
    /// Scalar units per sample (channels × rows × columns for a conv map).
    pub units: usize,
    /// Values per sample of the block input; 0 when the affine layer that
    /// feeds the tap is not known (an activation captured without it), and
    /// the block fits skip the tap.
    pub input_units: usize,
    pub block: BlockGeometry,
}

/// One residual block: its input is the block input of its first tap, its
/// output the activation of its last tap (after the residual addition).
#[derive(Debug, Clone)]
pub struct ResidualBlockInfo {
    pub name: String,
    /// The rows' `layer_kind`: `residual_block`, or for a transformer
    /// `attention_sublayer`, `mlp_sublayer`, `transformer_block`.
    pub kind: &'static str,
    pub first_tap: usize,
    pub last_tap: usize,
    /// The map fitted by `residual_linear_fit`: a convolution whose kernel
    /// is the block's receptive field and whose stride is the block's.
    pub block: BlockGeometry,
    /// The shortcut is the identity: input and output have the same shape.
    pub identity_shortcut: bool,
    /// A transformer's sublayer maps residual stream `from` to stream `to`
    /// ([`Chunk::streams`]) instead of tap inputs to tap outputs.
    pub streams: Option<(usize, usize)>,
}

/// One multi-head self-attention layer.
#[derive(Debug, Clone)]
pub struct AttentionInfo {
    /// e.g. `blocks.0.attn`.
    pub name: String,
    pub heads: usize,
    /// Queries = keys per sample.
    pub positions: usize,
    /// Query i attends to keys 0..=i only.
    pub causal: bool,
    /// The block's MLP tap (where its rows sit in depth).
    pub tap: usize,
}

#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub taps: Vec<TapInfo>,
    /// Residual blocks, in forward order (empty for plain networks).
    pub residual_blocks: Vec<ResidualBlockInfo>,
    /// Self-attention layers, in forward order (transformers only).
    pub attention: Vec<AttentionInfo>,
    pub num_classes: usize,
    /// Probe samples that will be observed.
    pub n_probe: usize,
}

/// The weight matrix of the affine layer feeding a tap, reshaped to
/// out × (in·kh·kw), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    pub tap: usize,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

/// A borrowed row-major matrix: `rows` samples, `cols` features.
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [f32],
}

impl<'a> Matrix<'a> {
    /// Panics only on a programming error in the caller (a buffer that does
    /// not hold rows × cols values), never on user data.
    pub fn new(rows: usize, cols: usize, data: &'a [f32]) -> Self {
        assert_eq!(rows * cols, data.len(), "matrix buffer size mismatch");
        Matrix { rows, cols, data }
    }

    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// One tap's values for a chunk of samples, each `[samples, *shape]`.
#[derive(Debug, Clone, Copy)]
pub struct TapChunk<'a> {
    /// What the tap's affine layer received (`[samples, *input shape]`);
    /// `None` unless a selected analyzer asked for block inputs.
    pub input: Option<&'a Tensor>,
    /// Pre-activation, `[samples, *tap shape]`.
    pub z: &'a Tensor,
    /// Activation, `[samples, *tap shape]`.
    pub a: &'a Tensor,
}

/// A chunk of the probe as seen by the analyzers.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    /// Empty unless a selected analyzer asked for taps.
    pub taps: &'a [TapChunk<'a>],
    /// Samples in the chunk (images, windows): the first dimension of
    /// every tap, stream and attention tensor.
    pub samples: usize,
    /// Logits `[predictions, classes]`, on the host (small): one row per
    /// sample, or per (window, position) for a language model.
    pub logits: Matrix<'a>,
    /// One label per row of `logits`.
    pub labels: &'a [i64],
    /// Index of the chunk's first sample in the probe.
    pub first: usize,
    /// A transformer's residual streams `[samples, positions, dim]`: stream
    /// 2i enters block i, 2i + 1 leaves its attention, 2i + 2 its MLP. Empty
    /// unless a selected analyzer asked for them.
    pub streams: &'a [Tensor],
    /// Per attention layer, the attention weights `[samples, heads,
    /// queries, keys]` (rows sum to 1). Empty unless asked for.
    pub attention: &'a [Tensor],
}
