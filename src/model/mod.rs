//! A model built from a [`ModelSpec`] and a set of named tensors (PyTorch
//! names, see docs/model-spec.md), whose forward pass can return every
//! tap's pre-activation `z` and activation `a`. The forward passes are each
//! architecture's (`arch/`); this dispatches to them. What they are
//! written with (taps, weights, layers, kernels) is `nn`, re-exported here
//! under the paths the rest of lintrace uses.

pub use crate::arch::cnn::Cnn;
pub use crate::arch::hf::HfCausalLm;
pub use crate::arch::mlp::Mlp;
pub use crate::arch::resnet::Resnet;
pub use crate::arch::transformer::Transformer;
pub use crate::nn::{activate, batch_norm, dropout, ops, Affine, Conv2d, Dense, Recorded, Start, TapValues, Taps, Weights};

use crate::spec::{Arch, ModelSpec};
use anyhow::Result;
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;

pub enum Model {
    Mlp(Mlp),
    Cnn(Cnn),
    Resnet(Resnet),
    Transformer(Transformer),
    HfCausalLm(HfCausalLm),
}

impl Model {
    pub fn new(spec: &ModelSpec, mut weights: Weights) -> Result<Model> {
        spec.validate().map_err(anyhow::Error::msg)?;
        let (frame, w) = (spec.frame(), &mut weights);
        let model = match &spec.arch {
            Arch::Mlp(_) => Model::Mlp(Mlp::new(&frame, &spec.layout(), w)?),
            Arch::Cnn(a) => Model::Cnn(Cnn::new(a, &frame, &spec.layout(), w)?),
            Arch::Resnet(a) => Model::Resnet(Resnet::new(a, &frame, &spec.layout(), w)?),
            Arch::Vit(a) => Model::Transformer(a.model(&frame, w)?),
            Arch::Gpt(a) => Model::Transformer(a.model(&frame, w)?),
            Arch::HfCausalLm(a) => Model::HfCausalLm(a.model(&frame, w)?),
        };
        weights.finish()?;
        Ok(model)
    }

    /// Logits for a batch `x` of shape [batch, *input_shape].
    pub fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        self.run(Start::Input(x), taps)
    }

    /// Logits from tap `l` on, given its values recorded by an earlier pass
    /// (its pre-activation `z`, [batch, *tap shape], and in a residual
    /// network the block input `skip`): the same as a full pass whose z_l is
    /// `from.z`.
    pub fn forward_from(&self, l: usize, from: &TapValues, taps: &mut Taps) -> Result<Tensor> {
        self.run(Start::Tap(l, from), taps)
    }

    fn run(&self, start: Start<'_>, taps: &mut Taps) -> Result<Tensor> {
        match self {
            Model::Mlp(m) => m.forward(start, taps),
            Model::Cnn(m) => m.forward(start, taps),
            Model::Resnet(m) => m.forward(start, taps),
            Model::Transformer(m) => m.forward(start, taps),
            Model::HfCausalLm(m) => m.forward(start, taps),
        }
    }

    /// Training mode: BatchNorm uses batch statistics and updates its running
    /// statistics. Off by default (evaluation, as the analyzer runs).
    pub fn set_training(&self, on: bool) {
        match self {
            Model::Cnn(m) => m.set_training(on),
            Model::Resnet(m) => m.set_training(on),
            Model::Transformer(m) => m.set_training(on),
            Model::Mlp(_) | Model::HfCausalLm(_) => {}
        }
    }

    /// Keys this training step's random choices (dropout masks).
    pub fn set_dropout_key(&self, key: u64) {
        match self {
            Model::Cnn(m) => m.set_dropout_key(key),
            Model::Transformer(m) => m.set_dropout_key(key),
            _ => {}
        }
    }

    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(x, &mut Taps::off())
    }

    pub fn forward_with_taps(&self, x: &Tensor) -> Result<(Tensor, Vec<TapValues>)> {
        let mut taps = Taps::record();
        let logits = self.forward(x, &mut taps)?;
        Ok((logits, taps.into_vec()))
    }

    /// Logits and everything a recording pass keeps (taps, and a
    /// transformer's residual streams and attention weights).
    pub fn forward_recorded(&self, x: &Tensor) -> Result<(Tensor, Recorded)> {
        self.forward_recorded_keeping(x, true, true)
    }

    /// [`Model::forward_recorded`], keeping a transformer's residual streams
    /// and attention weights only where asked.
    pub fn forward_recorded_keeping(&self, x: &Tensor, streams: bool, attention: bool) -> Result<(Tensor, Recorded)> {
        let mut taps = Taps::record_keeping(streams, attention);
        let logits = self.forward(x, &mut taps)?;
        Ok((logits, taps.into_recorded()))
    }
}

/// Builds a model whose weights all come from `tensors` on `device`.
pub fn build(spec: &ModelSpec, tensors: BTreeMap<String, Tensor>, device: &Device) -> Result<Model> {
    let tensors = tensors.into_iter().map(|(k, v)| Ok((k, v.to_device(device)?))).collect::<Result<BTreeMap<_, _>>>()?;
    Model::new(spec, Weights::new(tensors))
}
