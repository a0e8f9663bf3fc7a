//! `representation`: the effective rank of each tap's centred
//! post-activations over the probe.

use crate::analyzer::{Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
use crate::capture::ModelInfo;
use crate::gram::effective_rank_host;
use rayon::prelude::*;

pub struct Representation;

const NAME: &str = "representation";

impl Analyzer for Representation {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        // 2: a transformer's rows are (sample, position) pairs.
        2
    }
    fn description(&self) -> &'static str {
        "effective rank (exp entropy of normalised singular values) of each tap's centred post-activations"
    }
    fn metrics(&self) -> &'static [&'static str] {
        &["effective_rank"]
    }
    fn needs(&self) -> Needs {
        Needs { grams: true, ranks: true, ..Needs::default() }
    }
    fn start(&self, _model: &ModelInfo) -> Box<dyn Accumulator> {
        Box::new(RepAcc)
    }
}

struct RepAcc;

impl Accumulator for RepAcc {
    fn finish(self: Box<Self>, extras: &Extras<'_>) -> Result<Finished, AnalyzerError> {
        if let Some(ranks) = extras.ranks {
            return Ok(Finished::values(ranks.iter().enumerate().map(|(l, &r)| MetricValue::layer(l, "effective_rank", r)).collect()));
        }
        let grams =
            extras.grams.ok_or(AnalyzerError::NotApplicable { analyzer: NAME, message: "no Gram matrices were supplied".into() })?;
        let ranks = effective_ranks(grams).map_err(AnalyzerError::compute(NAME))?;
        Ok(Finished::values(ranks.into_iter().enumerate().map(|(l, r)| MetricValue::layer(l, "effective_rank", r)).collect()))
    }
}

/// The effective rank of each Gram. The matrices come to the host one by one
/// (device copies in order); their eigenvalue problems, each O(n³) and
/// mostly serial in its reduction to tridiagonal form, then run side by
/// side. Each one's result does not depend on the others or on scheduling.
pub fn effective_ranks(grams: &[crate::gram::Gram]) -> candle_core::Result<Vec<Option<f64>>> {
    let host = host_matrices(grams)?;
    Ok(ranks_of(&host))
}

/// (matrix, side, samples) of each Gram, on the host.
pub fn host_matrices(grams: &[crate::gram::Gram]) -> candle_core::Result<Vec<(Vec<f64>, usize, usize)>> {
    grams.iter().map(|g| g.host_matrix().map(|(v, side)| (v, side, g.n))).collect()
}

/// The effective ranks of host matrices from [`host_matrices`].
pub fn ranks_of(host: &[(Vec<f64>, usize, usize)]) -> Vec<Option<f64>> {
    host.par_iter().map(|(v, side, n)| effective_rank_host(v, *side, *n)).collect()
}
