//! The named weights a model takes as it is built.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;

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
            bail!("tensor '{name}' has shape {:?} but the spec needs {shape:?}", t.dims());
        }
        Ok(if t.dtype() == DType::F32 { t } else { t.to_dtype(DType::F32)? })
    }

    /// Tensors the spec did not ask for: an error, since a checkpoint with
    /// extra layers was not written for this spec.
    pub fn finish(self) -> Result<()> {
        if let Some(name) = self.tensors.keys().next() {
            bail!("tensor '{name}' is not part of the model spec ({} unexpected tensors)", self.tensors.len());
        }
        Ok(())
    }
}
