//! `activation_regime`: the on/off pattern of ReLU-family units on the probe.

use crate::analyzer::{Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
use crate::capture::ModelInfo;
use crate::stats::binary_entropy_bits;
use crate::unit_linear_fit::moments;

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
        Needs { moments: true, ..Needs::default() }
    }
    fn start(&self, model: &ModelInfo) -> Box<dyn Accumulator> {
        Box::new(RegimeAcc { model: model.clone() })
    }
}

struct RegimeAcc {
    model: ModelInfo,
}

impl Accumulator for RegimeAcc {
    fn finish(self: Box<Self>, extras: &Extras<'_>) -> Result<Finished, AnalyzerError> {
        let mut out = Vec::new();
        let all = moments(NAME, &self.model, extras)?;
        for info in self.model.taps.iter().filter(|t| t.activation.is_relu_family()) {
            let m = &all[info.index];
            if m.n == 0.0 {
                continue;
            }
            let (n, units) = (m.n, m.cols() as f64);
            let (mut active, mut on, mut off, mut entropy) = (0.0, 0.0, 0.0, 0.0);
            for &c in &m.positive_x {
                let p = c / n;
                active += p;
                on += (c == n) as u8 as f64;
                off += (c == 0.0) as u8 as f64;
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
