//! `residual_linear_fit`: per residual block, the best affine map from the
//! block's input X to its output Y (after the addition and its
//! nonlinearity), fitted as a convolution whose kernel is the block's
//! receptive field and whose stride is the block's, by the same ridge least
//! squares as `block_linear_fit` (positions subsampled the same way).
//!
//! `linearity_score_residual` is the score on the residual-free target
//! Y − X (Razzhigaev et al., 2024), defined where the shortcut is the
//! identity. The literal definition (docs/metrics.md) writes the target as Ỹ − X̃ with X̃, Ỹ each centred
//! and divided by its Frobenius norm; taken literally, ‖X̃A − (Ỹ − X̃)‖²
//! equals ‖X̃A' − Ỹ‖² (X̃ is in the span of the design), so the number would
//! repeat `linearity_score`. We normalise the target as the score
//! normalises any target: T = Ỹ − X̃_c, where X̃_c is the input at each
//! output position (the patch centre), and the score is
//! 1 − RSS_Ỹ / ‖T‖²_F, since the best fit of T leaves the residual of the
//! best fit of Ỹ. ‖T‖² = 2 − 2⟨Ỹ, X̃_c⟩, both read off the moments already
//! accumulated (the centre columns of X's patches). A block that passes
//! its input through unchanged has T = 0: its residual score is null.

use crate::analyzer::{check_taps, Accumulator, Analyzer, AnalyzerError, Extras, Finished, Needs};
use crate::capture::{Chunk, ModelInfo};
use crate::linear_fit::BlockFits;

pub struct ResidualLinearFit;

const NAME: &str = "residual_linear_fit";

impl Analyzer for ResidualLinearFit {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "per residual block: ridge least-squares conv map (receptive-field kernel) from block input to output, and on output − input"
    }
    fn metrics(&self) -> &'static [&'static str] {
        &["nonlinearity", "linearity_score", "linearity_score_residual", "n_rows", "n_features"]
    }
    fn needs(&self) -> Needs {
        Needs { taps: true, block_inputs: true, ..Needs::default() }
    }
    fn start(&self, model: &ModelInfo) -> Box<dyn Accumulator> {
        // A transformer's sublayers are `block_linear_fit`'s (docs/metrics.md).
        Box::new(ResidualAcc { model: model.clone(), fits: BlockFits::new(model, |b| b.streams.is_none()) })
    }
}

struct ResidualAcc {
    model: ModelInfo,
    fits: BlockFits,
}

impl Accumulator for ResidualAcc {
    fn observe(&mut self, chunk: &Chunk<'_>) -> Result<(), AnalyzerError> {
        check_taps(NAME, &self.model, chunk)?;
        self.fits.observe(NAME, chunk)
    }

    fn finish(self: Box<Self>, _extras: &Extras<'_>) -> Result<Finished, AnalyzerError> {
        let (mut values, mut notes) = (Vec::new(), Vec::new());
        self.fits.finish(NAME, &mut values, &mut notes)?;
        Ok(Finished { values, notes })
    }
}
