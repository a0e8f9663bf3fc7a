//! `representation`: the effective rank of each tap's centred
//! post-activations over the probe.

use crate::analyzer::{Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
use crate::capture::ModelInfo;
use crate::gram::effective_rank;

pub struct Representation;

const NAME: &str = "representation";

impl Analyzer for Representation {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "effective rank (exp entropy of normalised singular values) of each tap's centred post-activations"
    }
    fn metrics(&self) -> &'static [&'static str] {
        &["effective_rank"]
    }
    fn needs(&self) -> Needs {
        Needs { grams: true, ..Needs::default() }
    }
    fn start(&self, _model: &ModelInfo) -> Box<dyn Accumulator> {
        Box::new(RepAcc)
    }
}

struct RepAcc;

impl Accumulator for RepAcc {
    fn finish(self: Box<Self>, extras: &Extras<'_>) -> Result<Finished, AnalyzerError> {
        let grams =
            extras.grams.ok_or(AnalyzerError::NotApplicable { analyzer: NAME, message: "no Gram matrices were supplied".into() })?;
        let mut out = Vec::with_capacity(grams.len());
        for (l, g) in grams.iter().enumerate() {
            out.push(MetricValue::layer(l, "effective_rank", effective_rank(g).map_err(AnalyzerError::compute(NAME))?));
        }
        Ok(Finished::values(out))
    }
}
