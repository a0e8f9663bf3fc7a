//! `activation_regime`: the on/off pattern of ReLU-family units on the probe.

use crate::analyzer::{check_taps, Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
use crate::capture::{Chunk, ModelInfo};
use crate::stats::binary_entropy_bits;

pub struct ActivationRegime;

const NAME: &str = "activation_regime";

impl Analyzer for ActivationRegime {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "on/off pattern of ReLU-family units (z > 0) over the probe"
    }
    fn metrics(&self) -> &'static [&'static str] {
        &["frac_active", "frac_always_on", "frac_always_off", "frac_switching", "pattern_entropy"]
    }
    fn needs(&self) -> Needs {
        Needs { taps: true, ..Needs::default() }
    }
    fn start(&self, model: &ModelInfo) -> Box<dyn Accumulator> {
        let positive = model.taps.iter().map(|t| vec![0u64; t.units]).collect();
        Box::new(RegimeAcc { model: model.clone(), positive, n: 0 })
    }
}

struct RegimeAcc {
    model: ModelInfo,
    /// Per tap, per unit: how many samples had z > 0.
    positive: Vec<Vec<u64>>,
    n: u64,
}

impl Accumulator for RegimeAcc {
    fn observe(&mut self, chunk: &Chunk<'_>) -> Result<(), AnalyzerError> {
        check_taps(NAME, &self.model, chunk)?;
        for (info, tap) in self.model.taps.iter().zip(chunk.taps) {
            if !info.activation.is_relu_family() {
                continue;
            }
            let counts = &mut self.positive[info.index];
            for i in 0..tap.z.rows {
                for (c, &z) in counts.iter_mut().zip(tap.z.row(i)) {
                    *c += (z > 0.0) as u64;
                }
            }
        }
        self.n += chunk.labels.len() as u64;
        Ok(())
    }

    fn finish(self: Box<Self>, _extras: &Extras<'_>) -> Result<Finished, AnalyzerError> {
        let mut out = Vec::new();
        if self.n == 0 {
            return Ok(Finished::values(out));
        }
        let n = self.n as f64;
        for info in self.model.taps.iter().filter(|t| t.activation.is_relu_family()) {
            let counts = &self.positive[info.index];
            let units = counts.len() as f64;
            let (mut active, mut on, mut off, mut entropy) = (0.0, 0.0, 0.0, 0.0);
            for &c in counts {
                let p = c as f64 / n;
                active += p;
                on += (c == self.n) as u8 as f64;
                off += (c == 0) as u8 as f64;
                entropy += binary_entropy_bits(p);
            }
            let defined = |v: f64| (units > 0.0).then_some(v / units);
            let l = info.index;
            out.push(MetricValue::layer(l, "frac_active", defined(active)));
            out.push(MetricValue::layer(l, "frac_always_on", defined(on)));
            out.push(MetricValue::layer(l, "frac_always_off", defined(off)));
            out.push(MetricValue::layer(l, "frac_switching", defined(units - on - off)));
            out.push(MetricValue::layer(l, "pattern_entropy", defined(entropy)));
        }
        Ok(Finished::values(out))
    }
}
