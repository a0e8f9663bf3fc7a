//! One forward pass: what it records at each tap, where it starts, what
//! replaces a tap's nonlinearity. Every architecture's pass is written
//! with these.

use super::desc::Activation;
use super::layers::activate;
use anyhow::Result;
use candle_core::Tensor;

/// One tap's captured values for a batch, each shaped [batch, *shape]:
/// the block input (what the tap's affine layer received; `None` for the
/// tap a pass was resumed at), z (input of the nonlinearity) and a (its
/// output). In a residual network, `skip` is the input of the residual
/// block the tap belongs to (what its shortcut receives): with z it is
/// enough to resume a pass at this tap.
#[derive(Debug, Clone)]
pub struct TapValues {
    pub input: Option<Tensor>,
    pub z: Tensor,
    pub a: Tensor,
    pub skip: Option<Tensor>,
}

/// Where a forward pass starts: at the input, or at tap `l` with its
/// pre-activation `z_l` given, everything before it taken as computed.
/// Resuming is what makes the linearised variants cheap: a variant that
/// first differs from the intact network at tap `l` only recomputes what
/// comes after it.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    Input(&'a Tensor),
    /// Tap `l` with the values an earlier pass recorded there: its z, and
    /// what the rest of its block needs (inside a residual block the block's
    /// input, `skip`; for a gated MLP the tap's input, `input`).
    Tap(usize, &'a TapValues),
}

impl<'a> Start<'a> {
    pub fn input(self) -> Option<&'a Tensor> {
        match self {
            Start::Input(x) => Some(x),
            Start::Tap(..) => None,
        }
    }
    /// Whether the layers that produce tap `l` are skipped.
    pub fn skips(self, l: usize) -> bool {
        matches!(self, Start::Tap(k, ..) if l < k)
    }
    /// The given z_l, when the pass resumes at tap `l`.
    pub fn z_at(self, l: usize) -> Option<&'a Tensor> {
        match self {
            Start::Tap(k, from) if k == l => Some(&from.z),
            _ => None,
        }
    }
    /// The residual block input given with the resume tap.
    pub fn skip(self) -> Option<&'a Tensor> {
        match self {
            Start::Tap(_, from) => from.skip.as_ref(),
            Start::Input(_) => None,
        }
    }
    /// What the resume tap's affine layer received, when it was recorded.
    pub fn tap_input(self) -> Option<&'a Tensor> {
        match self {
            Start::Tap(_, from) => from.input.as_ref(),
            Start::Input(_) => None,
        }
    }
}

/// One block of a pass: the affine layer feeding tap `l` (or the given z_l
/// where the pass resumes), then tap `l`. `h` is the activation the pass
/// carries (`None` before its start); blocks before the start are skipped.
pub fn block(
    start: Start<'_>,
    l: usize,
    h: Option<Tensor>,
    taps: &mut Taps,
    act: Activation,
    leaky_slope: f64,
    affine: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Option<Tensor>> {
    if start.skips(l) {
        return Ok(h);
    }
    let z = match start.z_at(l) {
        Some(z) => z.clone(),
        None => affine(current(&h))?,
    };
    Ok(Some(taps.apply(l, act, leaky_slope, h.as_ref(), &z)?))
}

/// The activation a pass carries, present from its start on.
pub fn current(h: &Option<Tensor>) -> &Tensor {
    h.as_ref().expect("a pass has an activation from its start tap on")
}

/// A per-unit affine surrogate α ⊙ z + β for one tap; α and β are shaped
/// [1, *tap shape] so they broadcast over the batch.
#[derive(Debug, Clone)]
pub struct Affine {
    pub alpha: Tensor,
    pub beta: Tensor,
}

/// What a forward pass does at each tap: apply σ (or a surrogate put in its
/// place) and, when recording, keep (input, z, a). Recording pushes
/// reference-counted tensors, no copies; `off()` costs nothing.
pub struct Taps {
    record: bool,
    values: Vec<TapValues>,
    replace: Vec<Option<Affine>>,
    /// The input of the residual block being run, recorded with its taps.
    skip: Option<Tensor>,
    /// A transformer's residual streams and attention weights, in order.
    streams: Vec<Tensor>,
    attention: Vec<Tensor>,
    /// Whether a recording pass keeps the streams and attention weights
    /// (each is a model's worth of values per chunk).
    keep_streams: bool,
    keep_attention: bool,
}

/// What a recording pass kept: every tap's values and, for a transformer,
/// its residual streams (`[batch, positions, dim]`; 2i enters block i,
/// 2i + 1 leaves its attention, 2i + 2 its MLP) and attention weights
/// (`[batch, heads, queries, keys]` per block).
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub taps: Vec<TapValues>,
    pub streams: Vec<Tensor>,
    pub attention: Vec<Tensor>,
}

impl Taps {
    pub fn off() -> Self {
        Taps {
            record: false,
            values: Vec::new(),
            replace: Vec::new(),
            skip: None,
            streams: Vec::new(),
            attention: Vec::new(),
            keep_streams: true,
            keep_attention: true,
        }
    }
    pub fn record() -> Self {
        Taps { record: true, ..Self::off() }
    }
    /// Records every tap, and the streams and attention weights only where asked.
    pub fn record_keeping(streams: bool, attention: bool) -> Self {
        Taps { keep_streams: streams, keep_attention: attention, ..Self::record() }
    }
    /// Taps with `Some` use the surrogate instead of their nonlinearity.
    pub fn linearized(replace: Vec<Option<Affine>>) -> Self {
        Taps { replace, ..Self::off() }
    }
    /// Both: replaces taps and records every tap's values.
    pub fn record_linearized(replace: Vec<Option<Affine>>) -> Self {
        Taps { record: true, ..Self::linearized(replace) }
    }

    /// a = σ_l(z), or α ⊙ z + β where tap l is replaced.
    pub fn apply(&mut self, l: usize, act: Activation, leaky_slope: f64, input: Option<&Tensor>, z: &Tensor) -> Result<Tensor> {
        let a = match self.replace.get(l).and_then(Option::as_ref) {
            Some(s) => z.broadcast_mul(&s.alpha)?.broadcast_add(&s.beta)?,
            None => activate(act, leaky_slope, z)?,
        };
        if self.record {
            self.values.push(TapValues { input: input.cloned(), z: z.clone(), a: a.clone(), skip: self.skip.clone() });
        }
        Ok(a)
    }

    /// Whether this pass keeps what it computes (taps, streams, attention).
    pub fn recording(&self) -> bool {
        self.record
    }

    /// Whether this pass keeps the residual streams.
    pub fn keeping_streams(&self) -> bool {
        self.record && self.keep_streams
    }

    /// Sets the residual block input recorded with the following taps.
    pub fn set_skip(&mut self, skip: Option<Tensor>) {
        self.skip = skip;
    }

    /// Records a residual stream (transformers).
    pub fn stream(&mut self, x: &Tensor) {
        if self.record && self.keep_streams {
            self.streams.push(x.clone());
        }
    }

    /// Records attention weights (transformers).
    pub fn attention(&mut self, att: &Tensor) {
        if self.record && self.keep_attention {
            self.attention.push(att.clone());
        }
    }

    pub fn into_vec(self) -> Vec<TapValues> {
        self.values
    }

    pub fn into_recorded(self) -> Recorded {
        Recorded { taps: self.values, streams: self.streams, attention: self.attention }
    }
}
