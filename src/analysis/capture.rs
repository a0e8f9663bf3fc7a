//! Pushes the probe through one model in chunks, with taps, and feeds every
//! analyzer's accumulator chunk by chunk, so memory is bounded by the chunk
//! size, not the probe size.

use crate::model::Model;
use crate::probe::Probe;
use analyzers::{
    Accumulator, Analyzer, AnalyzerError, Chunk, Matrix, MetricValue, ModelInfo, TapChunk,
};
use anyhow::Result;
use candle_core::{Device, Tensor};

/// Per analyzer (in the order given): its values, or why it could not run.
pub type Outcome = Vec<Result<Vec<MetricValue>, AnalyzerError>>;

pub fn run(
    model: &Model,
    info: &ModelInfo,
    probe: &Probe,
    selected: &[&dyn Analyzer],
    chunk_size: usize,
    device: &Device,
) -> Result<Outcome> {
    let mut accs: Vec<Option<Box<dyn Accumulator>>> =
        selected.iter().map(|a| Some(a.start(info))).collect();
    let mut failures: Vec<Option<AnalyzerError>> = vec![None; selected.len()];
    let want_taps = selected.iter().any(|a| a.needs().taps);
    let d = probe.sample_len();
    let n = probe.len();
    let chunk_size = chunk_size.max(1);
    let mut start = 0;
    while start < n {
        let end = (start + chunk_size).min(n);
        let b = end - start;
        let mut shape = vec![b];
        shape.extend_from_slice(&probe.sample_shape);
        let x = Tensor::from_slice(&probe.inputs[start * d..end * d], shape, device)?;
        let (logits, taps) = if want_taps {
            model.forward_with_taps(&x)?
        } else {
            (model.logits(&x)?, Vec::new())
        };
        let logits = host(&logits)?;
        let host_taps: Vec<(Vec<f32>, Vec<f32>)> = taps
            .iter()
            .map(|t| Ok((host(&t.z)?, host(&t.a)?)))
            .collect::<Result<_>>()?;
        let tap_chunks: Vec<TapChunk<'_>> = if want_taps {
            host_taps
                .iter()
                .zip(&info.taps)
                .map(|((z, a), ti)| TapChunk {
                    z: Matrix::new(b, ti.units, z),
                    a: Matrix::new(b, ti.units, a),
                })
                .collect()
        } else {
            Vec::new()
        };
        let chunk = Chunk {
            taps: &tap_chunks,
            logits: Matrix::new(b, info.num_classes, &logits),
            labels: &probe.labels[start..end],
        };
        for (slot, fail) in accs.iter_mut().zip(failures.iter_mut()) {
            if let Some(acc) = slot {
                if let Err(e) = acc.observe(&chunk) {
                    *fail = Some(e);
                    *slot = None;
                }
            }
        }
        start = end;
    }
    Ok(accs
        .into_iter()
        .zip(failures)
        .map(|(acc, fail)| match (acc, fail) {
            (_, Some(e)) => Err(e),
            (Some(acc), None) => acc.finish(),
            (None, None) => unreachable!("an accumulator is dropped only on failure"),
        })
        .collect())
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?)
}
