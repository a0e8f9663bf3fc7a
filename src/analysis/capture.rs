//! Pushes the probe through one model in chunks, with taps, feeding every
//! analyzer's accumulator chunk by chunk; then computes the whole-probe
//! inputs that some analyzers asked for (Gram matrices, linearised variants)
//! once, and hands them to every analyzer's `finish`.

use crate::model::{Affine, Model};
use crate::probe::Probe;
use crate::spec::ModelSpec;
use analyzers::gram::Gram;
use analyzers::linearized_agreement::{self, VariantLogits};
use analyzers::stats::PairedMoments;
use analyzers::unit_linear_fit::surrogate;
use analyzers::{Accumulator, Analyzer, AnalyzerError, Chunk, Extras, Finished, Matrix, ModelInfo, Needs, TapChunk};
use anyhow::Result;
use candle_core::{Device, Tensor};

/// Per analyzer (in the order given): its result, or why it could not run.
pub type Outcome = Vec<Result<Finished, AnalyzerError>>;

/// Cross-checkpoint inputs the driver prepared (reference Grams, weights,
/// surrogate predictions); the per-checkpoint ones are computed here.
#[derive(Default)]
pub struct Shared<'a> {
    pub init_grams: Option<(u64, &'a [Gram])>,
    pub final_grams: Option<(u64, &'a [Gram])>,
    pub weights: Option<&'a [analyzers::LayerWeights]>,
    pub init_weights: Option<&'a [analyzers::LayerWeights]>,
    pub surrogates: &'a [analyzers::mu::SurrogatePredictions],
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)
}

fn batch(probe: &Probe, start: usize, end: usize, device: &Device) -> Result<Tensor> {
    let d = probe.sample_len();
    let mut shape = vec![end - start];
    shape.extend_from_slice(&probe.sample_shape);
    Ok(Tensor::from_slice(&probe.inputs[start * d..end * d], shape, device)?)
}

pub fn run(
    model: &Model,
    spec: &ModelSpec,
    probe: &Probe,
    selected: &[&dyn Analyzer],
    chunk_size: usize,
    device: &Device,
    shared: &Shared<'_>,
) -> Result<Outcome> {
    let info = &spec.model_info(probe.len());
    let needs = selected.iter().fold(Needs::default(), |n, a| n.union(a.needs()));
    let mut accs: Vec<Option<Box<dyn Accumulator>>> = selected.iter().map(|a| Some(a.start(info))).collect();
    let mut failures: Vec<Option<AnalyzerError>> = vec![None; selected.len()];
    let want_taps = needs.taps || needs.block_inputs || needs.grams || needs.variants;
    let n = probe.len();
    let chunk_size = chunk_size.max(1);
    // Whole-probe post-activations per tap, kept only for Gram matrices.
    let mut full_a: Vec<Vec<f32>> =
        if needs.grams { info.taps.iter().map(|t| Vec::with_capacity(n * t.units)).collect() } else { Vec::new() };
    // Unit moments for the linearised variants' surrogates, and base logits.
    let mut moments: Vec<PairedMoments> =
        if needs.variants { info.taps.iter().map(|t| PairedMoments::new(t.units)).collect() } else { Vec::new() };
    let mut base_logits = Vec::new();
    let empty: [f32; 0] = [];
    let mut start = 0;
    while start < n {
        let end = (start + chunk_size).min(n);
        let b = end - start;
        let x = batch(probe, start, end, device)?;
        let (logits, taps) = if want_taps { model.forward_with_taps(&x)? } else { (model.logits(&x)?, Vec::new()) };
        let logits = host(&logits)?;
        let host_taps: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = taps
            .iter()
            .map(|t| Ok((if needs.block_inputs { host(&t.input)? } else { Vec::new() }, host(&t.z)?, host(&t.a)?)))
            .collect::<Result<_>>()?;
        let tap_chunks: Vec<TapChunk<'_>> = host_taps
            .iter()
            .zip(&info.taps)
            .map(|((input, z, a), ti)| TapChunk {
                input: if needs.block_inputs { Matrix::new(b, ti.input_units, input) } else { Matrix::new(b, 0, &empty) },
                z: Matrix::new(b, ti.units, z),
                a: Matrix::new(b, ti.units, a),
            })
            .collect();
        let chunk = Chunk { taps: &tap_chunks, logits: Matrix::new(b, info.num_classes, &logits), labels: &probe.labels[start..end] };
        for (slot, fail) in accs.iter_mut().zip(failures.iter_mut()) {
            if let Some(acc) = slot {
                if let Err(e) = acc.observe(&chunk) {
                    *fail = Some(e);
                    *slot = None;
                }
            }
        }
        for (full, tc) in full_a.iter_mut().zip(&tap_chunks) {
            full.extend_from_slice(tc.a.data);
        }
        for (m, tc) in moments.iter_mut().zip(&tap_chunks) {
            m.observe(tc.z, tc.a);
        }
        if needs.variants {
            base_logits.extend_from_slice(&logits);
        }
        start = end;
    }

    let grams: Option<Vec<Gram>> =
        needs.grams.then(|| full_a.iter().zip(&info.taps).map(|(a, t)| Gram::from_rows(n, t.units, a)).collect());
    drop(full_a);
    let variants =
        if needs.variants { Some(linearized_logits(model, spec, info, probe, &moments, base_logits, chunk_size, device)?) } else { None };

    let extras = Extras {
        labels: &probe.labels,
        grams: grams.as_deref(),
        init_grams: shared.init_grams,
        final_grams: shared.final_grams,
        weights: shared.weights,
        init_weights: shared.init_weights,
        variants: variants.as_ref(),
        surrogates: shared.surrogates,
    };
    Ok(accs
        .into_iter()
        .zip(failures)
        .map(|(acc, fail)| match (acc, fail) {
            (_, Some(e)) => Err(e),
            (Some(acc), None) => acc.finish(&extras),
            (None, None) => unreachable!("an accumulator is dropped only on failure"),
        })
        .collect())
}

/// Runs the probe through every single/prefix/suffix variant of the model
/// with taps replaced by the per-unit affine surrogates fitted on this
/// checkpoint's own (z, a). 3L extra forward passes of the probe.
#[allow(clippy::too_many_arguments)]
fn linearized_logits(
    model: &Model,
    spec: &ModelSpec,
    info: &ModelInfo,
    probe: &Probe,
    moments: &[PairedMoments],
    base: Vec<f32>,
    chunk_size: usize,
    device: &Device,
) -> Result<VariantLogits> {
    // [1, *tap shape], so that α and β broadcast over the batch.
    let tap_shapes: Vec<Vec<usize>> = spec.taps().iter().map(|t| std::iter::once(1).chain(t.shape.iter().copied()).collect()).collect();
    let affines: Vec<Affine> = moments
        .iter()
        .zip(&tap_shapes)
        .map(|(m, shape)| {
            let s = surrogate(m);
            let to = |v: &[f64]| -> Result<Tensor> {
                Ok(Tensor::from_vec(v.iter().map(|&x| x as f32).collect::<Vec<f32>>(), shape.clone(), device)?)
            };
            Ok(Affine { alpha: to(&s.alpha)?, beta: to(&s.beta)? })
        })
        .collect::<Result<_>>()?;
    let n_taps = info.taps.len();
    let mut out = VariantLogits { classes: info.num_classes, base, variants: Vec::new() };
    for (kind, k) in linearized_agreement::variants(n_taps) {
        let replaced = kind.taps(k, n_taps);
        let mut logits = Vec::with_capacity(probe.len() * info.num_classes);
        let mut start = 0;
        while start < probe.len() {
            let end = (start + chunk_size).min(probe.len());
            let x = batch(probe, start, end, device)?;
            let replace: Vec<Option<Affine>> = (0..n_taps).map(|l| replaced.contains(&l).then(|| affines[l].clone())).collect();
            logits.extend(host(&model.logits_linearized(&x, replace)?)?);
            start = end;
        }
        out.variants.push((kind, k, logits));
    }
    Ok(out)
}

/// Centred Gram matrices of every tap's post-activations over the probe
/// (for a reference checkpoint).
pub fn grams(model: &Model, spec: &ModelSpec, probe: &Probe, chunk_size: usize, device: &Device) -> Result<Vec<Gram>> {
    let n = probe.len();
    let taps = spec.taps();
    let mut full: Vec<Vec<f32>> = taps.iter().map(|t| Vec::with_capacity(n * t.units())).collect();
    let mut start = 0;
    while start < n {
        let end = (start + chunk_size.max(1)).min(n);
        let (_, values) = model.forward_with_taps(&batch(probe, start, end, device)?)?;
        for (f, v) in full.iter_mut().zip(&values) {
            f.extend(host(&v.a)?);
        }
        start = end;
    }
    Ok(full.iter().zip(&taps).map(|(a, t)| Gram::from_rows(n, t.units(), a)).collect())
}
