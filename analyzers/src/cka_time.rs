//! `cka_time`: linear CKA of each tap's representation with the same tap at
//! step 0 and at the run's final checkpoint. Rows record which step they
//! were compared with (`ref_step`), so a run that gains a later checkpoint
//! gets its `cka_to_final` rows recomputed.

use crate::analyzer::{Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
use crate::capture::ModelInfo;
use crate::gram::cka;

pub struct CkaTime;

const NAME: &str = "cka_time";

impl Analyzer for CkaTime {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        // 2: a transformer's rows are (sample, position) pairs.
        2
    }
    fn description(&self) -> &'static str {
        "linear CKA of each tap's post-activations with step 0 and with the final checkpoint"
    }
    fn metrics(&self) -> &'static [&'static str] {
        &["cka_to_init", "cka_to_final"]
    }
    fn needs(&self) -> Needs {
        Needs { grams: true, reference_grams: true, ..Needs::default() }
    }
    fn start(&self, _model: &ModelInfo) -> Box<dyn Accumulator> {
        Box::new(CkaAcc)
    }
}

struct CkaAcc;

impl Accumulator for CkaAcc {
    fn finish(self: Box<Self>, extras: &Extras<'_>) -> Result<Finished, AnalyzerError> {
        let grams =
            extras.grams.ok_or(AnalyzerError::NotApplicable { analyzer: NAME, message: "no Gram matrices were supplied".into() })?;
        let mut out = Vec::new();
        let mut notes = Vec::new();
        for (metric, reference) in [("cka_to_init", extras.init_grams), ("cka_to_final", extras.final_grams)] {
            match reference {
                Some((ref_step, refs)) => {
                    for (l, (g, r)) in grams.iter().zip(refs).enumerate() {
                        let v = cka(g, r).map_err(AnalyzerError::compute(NAME))?;
                        out.push(MetricValue::layer(l, metric, v).with_ref_step(ref_step));
                    }
                }
                None => notes.push(format!("{metric}: no reference checkpoint (step 0 or final) could be read")),
            }
        }
        Ok(Finished { values: out, notes })
    }
}
