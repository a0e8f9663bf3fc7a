//! The probe (or any set of samples) on the device, uploaded once and
//! handed out in chunks: what a pass over a model iterates, in the analysis
//! and in the surrogates alike. A leaf below both.

use crate::probe::Probe;
use anyhow::Result;
use candle_core::{Device, Tensor};

/// Samples on the device, uploaded once, handed out in chunks.
pub struct Batches {
    x: Tensor,
    chunk: usize,
}

impl Batches {
    /// `inputs` row-major `[n, *sample_shape]`.
    pub fn new(inputs: &[f32], sample_shape: &[usize], chunk: usize, device: &Device) -> Result<Batches> {
        let d: usize = sample_shape.iter().product();
        let mut shape = vec![if d == 0 { 0 } else { inputs.len() / d }];
        shape.extend_from_slice(sample_shape);
        Ok(Batches { x: Tensor::from_slice(inputs, shape, device)?, chunk: chunk.max(1) })
    }

    pub fn probe(probe: &Probe, chunk: usize, device: &Device) -> Result<Batches> {
        Batches::new(&probe.inputs, &probe.sample_shape, windows_per_chunk(chunk, probe.targets()), device)
    }

    pub fn len(&self) -> usize {
        self.x.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (index of the first sample, `[samples, *shape]`) per chunk, in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<(usize, Tensor)>> + '_ {
        (0..self.len()).step_by(self.chunk).map(move |start| Ok((start, self.x.narrow(0, start, self.chunk.min(self.len() - start))?)))
    }
}

/// Samples per chunk for `chunk` (`--chunk-size`): a language model's
/// samples are windows of `positions` tokens, so its chunks hold whole
/// windows of about 32 · `chunk` tokens in all (8,192 by default), and the
/// memory of a pass grows with the tokens in a chunk, not with the context.
pub fn windows_per_chunk(chunk: usize, positions: usize) -> usize {
    if positions <= 1 {
        chunk
    } else {
        (chunk.saturating_mul(32) / positions).max(1)
    }
}
