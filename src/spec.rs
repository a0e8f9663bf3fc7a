//! The model spec: a JSON document that fully describes an architecture, so
//! that a checkpoint (which carries it in its metadata) is enough to rebuild
//! its model. See the README ("Model spec") for the format and the PyTorch mapping.

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
    Tanh,
    Identity,
}

impl Activation {
    pub fn parse(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.replace('-', "_")))
            .map_err(|_| format!("unknown activation '{s}' (expected relu, leaky_relu, gelu, tanh or identity)"))
    }
    pub fn kind(self) -> ActivationKind {
        match self {
            Activation::Relu => ActivationKind::Relu,
            Activation::LeakyRelu => ActivationKind::LeakyRelu,
            Activation::Gelu => ActivationKind::Gelu,
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
    },
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
    /// The tap this layer feeds, `None` for the head.
    pub tap: Option<usize>,
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
                let flat = mul(c, h).and_then(|n| mul(n, w)).ok_or_else(|| too_big("the flattened features"))?;
                dense(&mut add, flat, widths)?;
            }
        }
        Ok(())
    }

    pub fn num_taps(&self) -> usize {
        match &self.arch {
            Arch::Mlp { hidden } => hidden.len(),
            Arch::Cnn { conv, dense, .. } => conv.iter().filter(|c| matches!(c, ConvItem::Conv(_))).count() + dense.len(),
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
        let push_tap = |layers: &mut Vec<LayerDesc>, taps: &mut Vec<TapDesc>, layer: LayerDesc, module: String, shape: Vec<usize>| {
            let index = taps.len();
            taps.push(TapDesc {
                index,
                layer_name: layer.name.clone(),
                module_name: module,
                layer_kind: layer.kind,
                activation: self.tap_activation(index),
                shape,
            });
            layers.push(LayerDesc { tap: Some(index), ..layer });
        };
        let classes = self.num_classes;
        match &self.arch {
            Arch::Mlp { hidden } => {
                let mut prev = self.input_len();
                for (i, &w) in hidden.iter().enumerate() {
                    let layer =
                        LayerDesc { name: format!("layers.{}", 2 * i), kind: LayerKind::Dense, weight_shape: vec![w, prev], tap: None };
                    push_tap(&mut layers, &mut taps, layer, format!("layers.{}", 2 * i + 1), vec![w]);
                    prev = w;
                }
                layers.push(LayerDesc {
                    name: format!("layers.{}", 2 * hidden.len()),
                    kind: LayerKind::Dense,
                    weight_shape: vec![classes, prev],
                    tap: None,
                });
            }
            Arch::Cnn { conv, kernel_size, dense, batch_norm } => {
                let (mut c, mut h, mut w) = (self.input_shape[0], self.input_shape[1], self.input_shape[2]);
                let mut idx = 0;
                let bn = usize::from(*batch_norm);
                for item in conv {
                    match item {
                        ConvItem::Conv(out) => {
                            let layer = LayerDesc {
                                name: format!("features.{idx}"),
                                kind: LayerKind::Conv2d,
                                weight_shape: vec![*out, c, *kernel_size, *kernel_size],
                                tap: None,
                            };
                            push_tap(&mut layers, &mut taps, layer, format!("features.{}", idx + 1 + bn), vec![*out, h, w]);
                            if *batch_norm {
                                // METRICS.md: the tap's layer is the module that
                                // produces z, here the BatchNorm.
                                taps.last_mut().expect("just pushed").layer_name = format!("features.{}", idx + 1);
                            }
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
                let mut prev = c * h * w;
                for (i, &d) in dense.iter().enumerate() {
                    let layer =
                        LayerDesc { name: format!("classifier.{}", 2 * i), kind: LayerKind::Dense, weight_shape: vec![d, prev], tap: None };
                    push_tap(&mut layers, &mut taps, layer, format!("classifier.{}", 2 * i + 1), vec![d]);
                    prev = d;
                }
                layers.push(LayerDesc {
                    name: format!("classifier.{}", 2 * dense.len()),
                    kind: LayerKind::Dense,
                    weight_shape: vec![classes, prev],
                    tap: None,
                });
            }
        }
        (layers, taps)
    }

    /// Every tensor of a checkpoint: (name, shape), weights then biases per layer.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out: Vec<(String, Vec<usize>)> = self
            .layers()
            .into_iter()
            .flat_map(|l| {
                let out = l.weight_shape[0];
                [(format!("{}.weight", l.name), l.weight_shape.clone()), (format!("{}.bias", l.name), vec![out])]
            })
            .collect();
        for (bn, c) in self.batch_norms() {
            out.extend(["weight", "bias", "running_mean", "running_var"].map(|t| (format!("{bn}.{t}"), vec![c])));
        }
        out
    }

    /// Trainable parameters (BatchNorm's running statistics are buffers, not counted).
    pub fn num_parameters(&self) -> usize {
        self.tensor_shapes().iter().filter(|(n, _)| !is_buffer(n)).map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// The BatchNorm layers, (name, channels), in forward order.
    pub fn batch_norms(&self) -> Vec<(String, usize)> {
        match &self.arch {
            Arch::Cnn { batch_norm: true, .. } => self
                .layers()
                .iter()
                .filter(|l| l.kind == LayerKind::Conv2d)
                .map(|l| {
                    let idx: usize = l.name.trim_start_matches("features.").parse().expect("features.N");
                    (format!("features.{}", idx + 1), l.weight_shape[0])
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Per-sample shape of what each tap's affine layer receives, in tap order.
    pub fn block_input_shapes(&self) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        match &self.arch {
            Arch::Mlp { hidden } => {
                let mut prev = self.input_len();
                for &w in hidden {
                    out.push(vec![prev]);
                    prev = w;
                }
            }
            Arch::Cnn { conv, dense, .. } => {
                let (mut c, mut h, mut w) = (self.input_shape[0], self.input_shape[1], self.input_shape[2]);
                for item in conv {
                    match item {
                        ConvItem::Conv(out_c) => {
                            out.push(vec![c, h, w]);
                            c = *out_c;
                        }
                        ConvItem::Pool(_) => {
                            h /= 2;
                            w /= 2;
                        }
                    }
                }
                let mut prev = c * h * w;
                for &d in dense {
                    out.push(vec![prev]);
                    prev = d;
                }
            }
        }
        out
    }

    /// The description the analyzers get, for a probe of `n_probe` samples.
    pub fn model_info(&self, n_probe: usize) -> analyzers::ModelInfo {
        let inputs = self.block_input_shapes();
        let layers = self.layers();
        analyzers::ModelInfo {
            taps: self
                .taps()
                .iter()
                .zip(&inputs)
                .map(|(t, input)| {
                    let block = match t.layer_kind {
                        LayerKind::Dense => analyzers::BlockGeometry::Dense { features: input[0] },
                        LayerKind::Conv2d => {
                            let k = layers.iter().find(|l| l.tap == Some(t.index)).map(|l| l.weight_shape[2]).unwrap_or(1);
                            analyzers::BlockGeometry::Conv {
                                in_channels: input[0],
                                height: input[1],
                                width: input[2],
                                kernel: k,
                                stride: 1,
                                padding: k / 2,
                                out_channels: t.shape[0],
                                out_height: t.shape[1],
                                out_width: t.shape[2],
                            }
                        }
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
