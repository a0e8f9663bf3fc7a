//! The model spec: a JSON document that fully describes an architecture, so
//! that a checkpoint (which carries it in its metadata) is enough to rebuild
//! its model. See docs/model-spec.md for the format and the PyTorch mapping.
//!
//! The fields every spec has are here; each architecture's own fields,
//! presets, layout, checks and forward pass are its file in `arch/`, and
//! [`Arch`] only lists them and dispatches.

pub mod presets;

// The spec's parts, under the paths the rest of lintrace uses.
pub use crate::arch::cnn::{CnnSpec, ConvItem, PoolMarker};
pub use crate::arch::gpt::GptSpec;
pub use crate::arch::hf::{Family, HfArch, HfNames, Norm, Positions, Residual};
pub use crate::arch::mlp::MlpSpec;
pub use crate::arch::resnet::{ResBlock, ResnetSpec, Shortcut, Stem};
pub use crate::arch::vit::VitSpec;
pub use crate::nn::{
    conv_out, is_buffer, Activation, AttentionDesc, ExtraInit, ExtraTensor, Frame, LayerDesc, Layout, ResidualBlockDesc, TapDesc,
    MAX_ELEMENTS,
};

use crate::arch::ArchSpec;
use crate::nn::SizeGuard;
use analyzers::LayerKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

pub const SPEC_VERSION: u32 = 1;

/// The architectures, by the spec's `kind`; each variant's fields are its
/// file's (`arch/<kind>.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Arch {
    Mlp(MlpSpec),
    Cnn(CnnSpec),
    Resnet(ResnetSpec),
    Vit(VitSpec),
    Gpt(GptSpec),
    /// A Hugging Face decoder-only language model (GPT-NeoX/Pythia, GPT-2,
    /// Llama, OLMo, OLMo-2) in `transformers`' names, read from its own
    /// `config.json`; `input_shape` is [context] and `num_classes` the
    /// embedding's rows.
    HfCausalLm(HfArch),
}

impl Arch {
    /// The named residual networks and VGGs (`arch/resnet.rs`, `arch/cnn.rs`).
    pub fn preset(name: &str) -> Option<Arch> {
        ResnetSpec::preset(name).map(Arch::Resnet).or_else(|| CnnSpec::preset(name).map(Arch::Cnn))
    }

    /// The architecture's own fields.
    fn fields(&self) -> &dyn ArchSpec {
        match self {
            Arch::Mlp(a) => a,
            Arch::Cnn(a) => a,
            Arch::Resnet(a) => a,
            Arch::Vit(a) => a,
            Arch::Gpt(a) => a,
            Arch::HfCausalLm(a) => a,
        }
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

impl ModelSpec {
    pub fn from_json(text: &str) -> Result<Self, String> {
        let spec: ModelSpec = serde_json::from_str(text).map_err(|e| format!("malformed model spec: {e}"))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a spec always serialises")
    }

    /// What every architecture reads of the spec besides its own fields.
    /// (`tap_activations` must have one entry per tap: `validate` checks it
    /// before any layout is computed.)
    pub fn frame(&self) -> Frame {
        Frame { activations: (0..self.num_taps()).map(|l| self.tap_activation(l)).collect(), ..self.frame_without_activations() }
    }

    fn frame_without_activations(&self) -> Frame {
        Frame {
            input_shape: self.input_shape.clone(),
            num_classes: self.num_classes,
            activations: Vec::new(),
            leaky_relu_slope: self.leaky_relu_slope,
        }
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
        // The architecture's own rules first: they bound its depth, so the
        // taps counted next (and the frame's list of activations) are small.
        let bare = self.frame_without_activations();
        self.arch.fields().validate(&bare)?;
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
        // Before anything is allocated or multiplied unchecked.
        self.arch.fields().check_sizes(&self.frame(), &mut SizeGuard::default())
    }

    pub fn num_taps(&self) -> usize {
        self.arch.fields().num_taps()
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

    /// Everything the architecture's walk yields.
    pub fn layout(&self) -> Layout {
        self.arch.fields().layout(&self.frame())
    }

    /// Every affine layer in forward order, with PyTorch module names.
    pub fn layers(&self) -> Vec<LayerDesc> {
        self.layout().layers
    }

    /// Every tap in forward order.
    pub fn taps(&self) -> Vec<TapDesc> {
        self.layout().taps
    }

    /// Residual blocks (ResNets), or a transformer's sublayers and blocks,
    /// in forward order (empty for other architectures).
    pub fn residual_blocks(&self) -> Vec<ResidualBlockDesc> {
        self.layout().blocks
    }

    /// Tensors other than affine layers' weights and biases: embeddings,
    /// class token and LayerNorms (transformers only).
    pub fn extra_tensors(&self) -> Vec<ExtraTensor> {
        self.layout().extras
    }

    /// The self-attention layers (transformers only).
    pub fn attention_layers(&self) -> Vec<AttentionDesc> {
        self.layout().attention
    }

    /// Sequence length the blocks see: tokens of a language model's window,
    /// or the patches of a ViT plus its class token (0 for other models).
    pub fn positions(&self) -> usize {
        match &self.arch {
            Arch::Vit(a) => a.positions(&self.frame()),
            Arch::Gpt(_) | Arch::HfCausalLm(_) => self.input_shape[0],
            _ => 0,
        }
    }

    /// Inputs a model can take: a token model's are token ids (whole
    /// numbers in `0..vocab`); anything else takes any finite value.
    pub fn check_inputs(&self, x: &[f32]) -> Result<(), String> {
        let vocab = match &self.arch {
            Arch::Gpt(a) => Some(a.vocab),
            Arch::HfCausalLm(a) => Some(a.vocab),
            _ => None,
        };
        if let Some(vocab) = vocab {
            if let Some(bad) = x.iter().find(|v| !(v.fract() == 0.0 && **v >= 0.0 && (**v as usize) < vocab)) {
                return Err(format!("input {bad} is not a token id in 0..{vocab}"));
            }
        }
        Ok(())
    }

    /// Names of tensors AdamW does not decay: biases, norms and embeddings.
    pub fn no_decay(&self, name: &str) -> bool {
        name.ends_with(".bias")
            || self.batch_norms().iter().any(|(bn, _)| name.starts_with(&format!("{bn}.")))
            || self.extra_tensors().iter().any(|e| e.name == name)
    }

    /// Every tensor of a checkpoint: (name, shape), weights then biases per
    /// layer, then the BatchNorms' parameters and running statistics.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let layout = self.layout();
        let mut out: Vec<(String, Vec<usize>)> = Vec::new();
        for l in &layout.layers {
            out.push((format!("{}.weight", l.name), l.weight_shape.clone()));
            if l.bias {
                out.push((format!("{}.bias", l.name), vec![l.weight_shape[0]]));
            }
        }
        for l in &layout.layers {
            if let Some(bn) = &l.norm {
                out.extend(["weight", "bias", "running_mean", "running_var"].map(|t| (format!("{bn}.{t}"), vec![l.weight_shape[0]])));
            }
        }
        out.extend(layout.extras.into_iter().map(|e| (e.name, e.shape)));
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

    /// Predictions (rows of logits, labels) per sample: a language model's
    /// window has one per position, every other model one.
    pub fn predictions_per_sample(&self) -> usize {
        match &self.arch {
            Arch::Gpt(a) if a.lm => self.positions(),
            Arch::HfCausalLm(_) => self.positions(),
            _ => 1,
        }
    }

    /// The description the analyzers get, for a probe of `n_probe` samples.
    pub fn model_info(&self, n_probe: usize) -> analyzers::ModelInfo {
        let layout = self.layout();
        let layers: Vec<&LayerDesc> = layout.layers.iter().filter(|l| l.tap.is_some()).collect();
        analyzers::ModelInfo {
            taps: layout
                .taps
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
            residual_blocks: layout
                .blocks
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
            attention: layout
                .attention
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
