//! Pushes the probe through one model in chunks, with taps (or reads the
//! activations a PyTorch model's taps recorded), feeding every
//! analyzer's accumulator chunk by chunk; then computes the whole-probe
//! inputs that some analyzers asked for (unit moments, Gram matrices,
//! linearised variants) once, and hands them to every analyzer's `finish`.
//!
//! Everything stays on the model's device: the probe is uploaded once,
//! taps are passed to the analyzers as device tensors, and only logits and
//! small per-unit or per-tap results come back to the host.

use crate::activations::ActivationFile;
pub use crate::batches::{windows_per_chunk, Batches};
use crate::model::{Affine, Model, Recorded, TapValues, Taps};
use crate::probe::Probe;
use crate::spec::ModelSpec;
use analyzers::gram::Gram;
use analyzers::linearized_agreement::{self, RowScores, VariantKind, VariantLogits};
use analyzers::stats::{PairedMoments, UnitMoments};
use analyzers::unit_linear_fit::surrogate;
use analyzers::{Accumulator, Analyzer, AnalyzerError, Chunk, Extras, Finished, Matrix, ModelInfo, Needs, TapChunk};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};

/// Per analyzer (in the order given): its result, or why it could not run.
pub type Outcome = Vec<Result<Finished, AnalyzerError>>;

/// Cross-checkpoint inputs the driver prepared (reference Grams, weights,
/// surrogate predictions); the per-checkpoint ones are computed here.
#[derive(Default)]
pub struct Shared<'a> {
    pub init_grams: Option<(u64, &'a [Gram])>,
    pub final_grams: Option<(u64, &'a [Gram])>,
    /// This checkpoint's own Grams when they were already computed (it is
    /// the run's step 0 or final checkpoint): not computed twice.
    pub grams: Option<&'a [Gram]>,
    pub weights: Option<&'a [analyzers::LayerWeights]>,
    pub init_weights: Option<&'a [analyzers::LayerWeights]>,
    pub surrogates: &'a [analyzers::mu::SurrogatePredictions],
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// A tensor's f32 values on the host: its own buffer when it is a
/// contiguous f32 tensor on the CPU (a language model's logits are 200 MB a
/// chunk), else a copy.
enum HostF32<'a> {
    Borrowed(Box<dyn std::ops::Deref<Target = candle_core::Storage> + 'a>, std::ops::Range<usize>),
    Owned(Vec<f32>),
}

impl HostF32<'_> {
    fn of(t: &Tensor) -> Result<HostF32<'_>> {
        if t.dtype() == DType::F32 && t.is_contiguous() {
            let (guard, layout) = t.storage_and_layout();
            let start = layout.start_offset();
            if let candle_core::Storage::Cpu(cpu) = &*guard {
                if cpu.as_slice::<f32>().is_ok_and(|all| all.len() >= start + t.elem_count()) {
                    return Ok(HostF32::Borrowed(Box::new(guard), start..start + t.elem_count()));
                }
            }
        }
        Ok(HostF32::Owned(host(t)?))
    }

    fn as_slice(&self) -> &[f32] {
        match self {
            HostF32::Borrowed(guard, range) => match &***guard {
                candle_core::Storage::Cpu(cpu) => cpu.as_slice::<f32>().map_or(&[], |all| &all[range.clone()]),
                _ => &[],
            },
            HostF32::Owned(v) => v,
        }
    }
}

/// What one pass over the probe collected besides the analyzers' own state.
struct Pass {
    moments: Vec<PairedMoments>,
    /// Per tap, the post-activation chunks (for Gram matrices).
    activations: Vec<Vec<Tensor>>,
    /// The intact network's row scores (for the linearised variants).
    scores: RowScores,
}

/// One chunk as a pass delivers it: (index of its first sample, samples,
/// logits, the values recorded at the taps).
type Delivered = Result<(usize, usize, Tensor, Recorded)>;

/// Whether a pass must record the taps (or streams, attention) for `needs`.
fn wants_taps(needs: Needs) -> bool {
    needs.taps || needs.block_inputs || needs.moments || needs.grams || needs.streams || needs.attention
}

/// The chunks of a forward pass of `model` over `batches`.
fn model_chunks<'a>(model: &'a Model, batches: &'a Batches, needs: Needs) -> impl Iterator<Item = Delivered> + 'a {
    batches.iter().map(move |item| {
        let (first, x) = item?;
        let b = x.dims()[0];
        let (logits, recorded) = if wants_taps(needs) {
            model.forward_recorded_keeping(&x, needs.streams, needs.attention)?
        } else {
            (model.logits(&x)?, Default::default())
        };
        Ok((first, b, logits, recorded))
    })
}

/// The chunks of a file of captured activations: what a forward pass
/// would have recorded, read `chunk` samples at a time.
fn captured_chunks<'a>(file: &'a ActivationFile, chunk: usize, needs: Needs, device: &'a Device) -> impl Iterator<Item = Delivered> + 'a {
    let per = file.layout.predictions_per_sample;
    let n = file.n;
    (0..n).step_by(chunk.max(1)).map(move |first| {
        let b = chunk.max(1).min(n - first);
        let logits = file.rows("logits", first * per, b * per, device)?;
        let mut recorded = Recorded::default();
        if wants_taps(needs) {
            for (i, has_input) in file.has_input.iter().enumerate() {
                let input =
                    if needs.block_inputs && *has_input { Some(file.rows(&format!("taps.{i}.input"), first, b, device)?) } else { None };
                recorded.taps.push(TapValues {
                    input,
                    z: file.rows(&format!("taps.{i}.z"), first, b, device)?,
                    a: file.rows(&format!("taps.{i}.a"), first, b, device)?,
                    skip: None,
                });
            }
        }
        if needs.attention {
            for j in 0..file.layout.attention.len() {
                recorded.attention.push(file.rows(&format!("attention.{j}"), first, b, device)?);
            }
        }
        Ok((first, b, logits, recorded))
    })
}

/// One pass over the probe: feeds `accs` (a failing accumulator is dropped
/// and its error kept in `failures`) and collects what `needs` asks for.
fn pass(
    chunks: impl Iterator<Item = Delivered>,
    n_samples: usize,
    info: &ModelInfo,
    labels: &[i64],
    needs: Needs,
    accs: &mut [Option<Box<dyn Accumulator>>],
    failures: &mut [Option<AnalyzerError>],
) -> Result<Pass> {
    let mut out = Pass {
        moments: if needs.moments { info.taps.iter().map(|t| PairedMoments::new(t.units)).collect() } else { Vec::new() },
        activations: if needs.grams { vec![Vec::new(); info.taps.len()] } else { Vec::new() },
        scores: RowScores::default(),
    };
    // Predictions per sample: 1, or a language model's one per position.
    let per = labels.len() / n_samples.max(1);
    for item in chunks {
        let (first, b, logits, recorded) = item?;
        let taps = &recorded.taps;
        let logits = HostF32::of(&logits)?;
        let logits = logits.as_slice();
        let tap_chunks: Vec<TapChunk<'_>> = if needs.taps || needs.block_inputs {
            taps.iter().map(|t| TapChunk { input: t.input.as_ref().filter(|_| needs.block_inputs), z: &t.z, a: &t.a }).collect()
        } else {
            Vec::new()
        };
        let chunk = Chunk {
            taps: &tap_chunks,
            samples: b,
            logits: Matrix::new(b * per, info.num_classes, logits),
            labels: &labels[first * per..(first + b) * per],
            first,
            streams: if needs.streams { &recorded.streams } else { &[] },
            attention: if needs.attention { &recorded.attention } else { &[] },
        };
        for (slot, fail) in accs.iter_mut().zip(failures.iter_mut()) {
            if let Some(acc) = slot {
                if let Err(e) = acc.observe(&chunk) {
                    *fail = Some(e);
                    *slot = None;
                }
            }
        }
        for (m, t) in out.moments.iter_mut().zip(taps) {
            m.observe(&t.z, &t.a)?;
        }
        for ((a, t), tap) in out.activations.iter_mut().zip(taps).zip(&info.taps) {
            a.push(gram_rows(&t.a, tap)?);
        }
        if needs.variants {
            out.scores.extend(Matrix::new(b * per, info.num_classes, logits), &labels[first * per..(first + b) * per]);
        }
    }
    Ok(out)
}

/// A tap's activations as the rows of its Gram matrix: one per sample, or
/// for a transformer one per (sample, position) with the MLP's features
/// (docs/metrics.md, "Sequence models").
fn gram_rows(a: &Tensor, tap: &analyzers::TapInfo) -> Result<Tensor> {
    Ok(match tap.block {
        analyzers::BlockGeometry::Tokens { positions, .. } => a.reshape((a.dims()[0] * positions, tap.units / positions))?,
        _ => a.clone(),
    })
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
    let batches = Batches::probe(probe, chunk_size, device)?;
    analyse(
        info,
        &probe.labels,
        selected,
        shared,
        |needs| model_chunks(model, &batches, needs),
        batches.len(),
        Some(|moments: &[UnitMoments], base: RowScores| variant_logits(model, spec, info, &batches, moments, base, &probe.labels, device)),
    )
}

/// [`run`] over activations captured in PyTorch instead of a forward pass:
/// every analyzer that needs only what was captured. The caller keeps the
/// others (the linearised variants need a model to run) out of `selected`.
pub fn run_captured(
    file: &ActivationFile,
    probe: &Probe,
    selected: &[&dyn Analyzer],
    chunk_size: usize,
    device: &Device,
    shared: &Shared<'_>,
) -> Result<Outcome> {
    let info = &file.model_info();
    let chunk = windows_per_chunk(chunk_size, file.layout.predictions_per_sample);
    type NoVariants = fn(&[UnitMoments], RowScores) -> Result<VariantLogits>;
    analyse(info, &probe.labels, selected, shared, |needs| captured_chunks(file, chunk, needs, device), file.n, None::<NoVariants>)
}

/// Feeds the analyzers one pass of chunks, computes the whole-probe inputs
/// they asked for, and finishes them.
fn analyse<I: Iterator<Item = Delivered>>(
    info: &ModelInfo,
    labels: &[i64],
    selected: &[&dyn Analyzer],
    shared: &Shared<'_>,
    chunks: impl FnOnce(Needs) -> I,
    n_samples: usize,
    variants: Option<impl FnOnce(&[UnitMoments], RowScores) -> Result<VariantLogits> + Send>,
) -> Result<Outcome> {
    let mut needs = selected.iter().fold(Needs::default(), |n, a| n.union(a.needs()));
    needs.moments |= needs.variants;
    let own_grams = needs.grams && shared.grams.is_none();
    let pass_needs = Needs { grams: own_grams, ..needs };
    let mut accs: Vec<Option<Box<dyn Accumulator>>> = selected.iter().map(|a| Some(a.start(info))).collect();
    let mut failures: Vec<Option<AnalyzerError>> = vec![None; selected.len()];
    // Analyzers that need only weights or held-out predictions cause no pass.
    let wants_pass = needs.logits
        || needs.taps
        || needs.block_inputs
        || needs.moments
        || own_grams
        || needs.variants
        || needs.streams
        || needs.attention;
    let collected =
        if wants_pass { Some(pass(chunks(pass_needs), n_samples, info, labels, pass_needs, &mut accs, &mut failures)?) } else { None };

    let (moments, computed_grams, base_logits) = match collected {
        Some(p) => {
            let moments = p.moments.iter().map(|m| m.finish()).collect::<candle_core::Result<Vec<UnitMoments>>>()?;
            let grams = if own_grams {
                Some(p.activations.iter().map(|a| Gram::from_chunks(a)).collect::<candle_core::Result<Vec<_>>>()?)
            } else {
                None
            };
            (moments, grams, p.scores)
        }
        None => (Vec::new(), None, RowScores::default()),
    };
    let grams = computed_grams.as_deref().or(shared.grams);
    // The effective ranks' eigenvalue problems (host, O(n³) each) run beside
    // the linearised variants (device work on a GPU) instead of after them;
    // the Gram copies to the host come first, on this thread, in stream
    // order. rayon::join, not a blocking thread join: the analysis may itself
    // run on a rayon worker, and a worker blocked on a join of work queued
    // behind it would deadlock a one-thread pool.
    let host_grams = match grams.filter(|_| needs.ranks) {
        Some(g) => Some(analyzers::representation::host_matrices(g)?),
        None => None,
    };
    let (variants, ranks) = rayon::join(
        || match variants.filter(|_| needs.variants) {
            Some(compute) => compute(&moments, base_logits).map(Some),
            None => Ok(None),
        },
        || host_grams.as_ref().map(|h| analyzers::representation::ranks_of(h)),
    );
    let variants = variants?;

    let extras = Extras {
        labels,
        moments: needs.moments.then_some(moments.as_slice()),
        grams,
        ranks: ranks.as_deref(),
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

/// Row scores of every single/prefix/suffix variant of the model, with taps
/// replaced by the per-unit affine surrogates fitted on this checkpoint's
/// own (z, a). Each variant resumes where it first differs from a pass
/// already made: a single or suffix variant at tap k from the intact
/// network's z_k, a prefix 0..k at tap k+1 from the fully linearised
/// network's z_{k+1} (taps 0..k replaced there too). So the probe makes one
/// full pass (intact) plus the parts after each tap, instead of 3L full
/// passes.
fn variant_logits(
    model: &Model,
    spec: &ModelSpec,
    info: &ModelInfo,
    batches: &Batches,
    moments: &[UnitMoments],
    base: RowScores,
    labels: &[i64],
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
    let replacing =
        |taps: &[usize]| -> Vec<Option<Affine>> { (0..n_taps).map(|l| taps.contains(&l).then(|| affines[l].clone())).collect() };
    let kinds = linearized_agreement::variants(n_taps);
    // The taps each variant replaces, and the earlier variant replacing the
    // same ones if any: prefix 0 and single 0 ({0}), single L−1 and suffix
    // L−1 ({L−1}), prefix L−1 and suffix 0 (all) are one network each, run
    // once and its scores copied.
    let replaced: Vec<Vec<usize>> = kinds.iter().map(|&(kind, k)| kind.taps(k, n_taps)).collect();
    let same_as: Vec<Option<usize>> = replaced.iter().enumerate().map(|(i, r)| replaced[..i].iter().position(|p| p == r)).collect();
    // Each variant's logits are reduced to row scores chunk by chunk.
    let mut scores: Vec<RowScores> = vec![RowScores::default(); kinds.len()];
    let per = labels.len() / batches.len().max(1);
    for item in batches.iter() {
        let (first, x) = item?;
        let b = x.dims()[0];
        let chunk_labels = &labels[first * per..(first + b) * per];
        let (_, intact) = model.forward_with_taps(&x)?;
        // The fully linearised network is the suffix variant from tap 0 (z_0
        // is the same with or without surrogates): one resumed pass, whose
        // recorded z_k are where the prefix variants resume.
        let mut all_linear = Taps::record_linearized(replacing(&(0..n_taps).collect::<Vec<_>>()));
        let linear_logits = model.forward_from(0, &intact[0], &mut all_linear)?;
        let linear = all_linear.into_vec();
        for (i, &(kind, k)) in kinds.iter().enumerate() {
            if same_as[i].is_some() {
                continue;
            }
            let l = match kind {
                _ if replaced[i].len() == n_taps => linear_logits.clone(),
                VariantKind::Single | VariantKind::Suffix => {
                    model.forward_from(k, &intact[k], &mut Taps::linearized(replacing(&replaced[i])))?
                }
                VariantKind::Prefix => model.forward_from(k + 1, &linear[k + 1], &mut Taps::off())?,
            };
            scores[i].extend(Matrix::new(b * per, info.num_classes, HostF32::of(&l)?.as_slice()), chunk_labels);
        }
    }
    for (i, j) in same_as.iter().enumerate() {
        if let Some(j) = *j {
            scores[i] = scores[j].clone();
        }
    }
    Ok(VariantLogits {
        classes: info.num_classes,
        base,
        variants: kinds.into_iter().zip(scores).map(|((kind, k), s)| (kind, k, s)).collect(),
    })
}

/// Centred Gram matrices of every tap's post-activations over the probe
/// (for a reference checkpoint, or a checkpoint analysed later).
pub fn grams(model: &Model, spec: &ModelSpec, probe: &Probe, chunk_size: usize, device: &Device) -> Result<Vec<Gram>> {
    let info = spec.model_info(probe.len());
    let batches = Batches::probe(probe, chunk_size, device)?;
    let needs = Needs { grams: true, ..Needs::default() };
    let p = pass(model_chunks(model, &batches, needs), batches.len(), &info, &probe.labels, needs, &mut [], &mut [])?;
    Ok(p.activations.iter().map(|a| Gram::from_chunks(a)).collect::<candle_core::Result<Vec<_>>>()?)
}

/// [`grams`] of captured activations.
pub fn captured_grams(file: &ActivationFile, probe: &Probe, chunk_size: usize, device: &Device) -> Result<Vec<Gram>> {
    let info = file.model_info();
    let needs = Needs { grams: true, ..Needs::default() };
    let chunk = windows_per_chunk(chunk_size, file.layout.predictions_per_sample);
    let p = pass(captured_chunks(file, chunk, needs, device), file.n, &info, &probe.labels, needs, &mut [], &mut [])?;
    Ok(p.activations.iter().map(|a| Gram::from_chunks(a)).collect::<candle_core::Result<Vec<_>>>()?)
}
