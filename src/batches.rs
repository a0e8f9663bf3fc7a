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

/// The largest `--chunk-size` up to `default` whose chunks keep
/// `per_sample` bytes a sample within `budget` (at least one sample or
/// window a chunk), for samples of `positions` predictions.
pub fn chunk_within(budget: u64, per_sample: u64, positions: usize, default: usize) -> usize {
    let fit = usize::try_from(budget / per_sample.max(1)).unwrap_or(usize::MAX).max(1);
    if fit >= windows_per_chunk(default, positions) {
        default
    } else if positions <= 1 {
        fit
    } else {
        // windows_per_chunk's inverse: chunk · 32 / positions windows.
        (fit * positions).div_ceil(32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_shrink_only_for_large_samples() {
        // A 160M language model's 512-token window records about 1.4 GB: two fit in 3 GiB.
        let c = chunk_within(3 << 30, 1_400_000_000, 512, 256);
        assert_eq!((c, windows_per_chunk(c, 512)), (32, 2));
        // An image model's sample is small: the default stays.
        assert_eq!(chunk_within(3 << 30, 200_000, 1, 256), 256);
        // A sample larger than the budget still goes through, alone.
        assert_eq!(chunk_within(1 << 20, 1 << 30, 1, 256), 1);
        assert_eq!(windows_per_chunk(chunk_within(1 << 20, 1 << 30, 100, 256), 100), 1);
    }
}
