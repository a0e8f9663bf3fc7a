//! Models, written out plainly in candle. Each model is built from a
//! [`ModelSpec`] and a set of named tensors (PyTorch names, see
//! the README ("Model spec")), and its forward pass can return every tap's
//! pre-activation `z` and activation `a`.

mod cnn;
mod layers;
mod mlp;

pub use cnn::Cnn;
pub use layers::{activate, Conv2d, Dense};
pub use mlp::Mlp;

use crate::spec::{Arch, ModelSpec};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;

/// One tap's captured values for a batch: z (input of the nonlinearity) and
/// a (its output), shaped [batch, *tap shape].
#[derive(Debug, Clone)]
pub struct TapValues {
    pub z: Tensor,
    pub a: Tensor,
}

/// Whether a forward pass records taps. `Off` costs nothing: tensors are only
/// pushed (reference-counted, not copied) when recording.
pub enum Taps {
    Off,
    Record(Vec<TapValues>),
}

impl Taps {
    pub fn push(&mut self, z: &Tensor, a: &Tensor) {
        if let Taps::Record(v) = self {
            v.push(TapValues {
                z: z.clone(),
                a: a.clone(),
            });
        }
    }
    pub fn into_vec(self) -> Vec<TapValues> {
        match self {
            Taps::Off => Vec::new(),
            Taps::Record(v) => v,
        }
    }
}

/// Named parameter tensors, checked against the spec as they are taken.
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
}

impl Weights {
    pub fn new(tensors: BTreeMap<String, Tensor>) -> Self {
        Weights { tensors }
    }

    /// The tensor `name`, which must exist with `shape`; errors name the
    /// tensor and both shapes.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let Some(t) = self.tensors.remove(name) else {
            bail!("tensor '{name}' (shape {shape:?}) is missing");
        };
        if t.dims() != shape {
            bail!(
                "tensor '{name}' has shape {:?} but the spec needs {shape:?}",
                t.dims()
            );
        }
        Ok(if t.dtype() == DType::F32 {
            t
        } else {
            t.to_dtype(DType::F32)?
        })
    }

    /// Tensors the spec did not ask for: an error, since a checkpoint with
    /// extra layers was not written for this spec.
    pub fn finish(self) -> Result<()> {
        if let Some(name) = self.tensors.keys().next() {
            bail!(
                "tensor '{name}' is not part of the model spec ({} unexpected tensors)",
                self.tensors.len()
            );
        }
        Ok(())
    }
}

pub enum Model {
    Mlp(Mlp),
    Cnn(Cnn),
}

impl Model {
    pub fn new(spec: &ModelSpec, mut weights: Weights) -> Result<Model> {
        spec.validate().map_err(anyhow::Error::msg)?;
        let model = match spec.arch {
            Arch::Mlp { .. } => Model::Mlp(Mlp::new(spec, &mut weights)?),
            Arch::Cnn { .. } => Model::Cnn(Cnn::new(spec, &mut weights)?),
        };
        weights.finish()?;
        Ok(model)
    }

    /// Logits for a batch `x` of shape [batch, *input_shape].
    pub fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        Ok(match self {
            Model::Mlp(m) => m.forward(x, taps)?,
            Model::Cnn(m) => m.forward(x, taps)?,
        })
    }

    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(x, &mut Taps::Off)
    }

    pub fn forward_with_taps(&self, x: &Tensor) -> Result<(Tensor, Vec<TapValues>)> {
        let mut taps = Taps::Record(Vec::new());
        let logits = self.forward(x, &mut taps)?;
        Ok((logits, taps.into_vec()))
    }
}

/// Builds a model whose weights all come from `tensors` on `device`.
pub fn build(
    spec: &ModelSpec,
    tensors: BTreeMap<String, Tensor>,
    device: &Device,
) -> Result<Model> {
    let tensors = tensors
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_device(device)?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    Model::new(spec, Weights::new(tensors))
}
