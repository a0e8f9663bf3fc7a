//! `mu`: linear-surrogate agreement à la Kalimeris et al. (2019), μ_Y(F;S)
//! and its parts for every surrogate the driver supplies predictions of.

use crate::analyzer::{Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
use crate::capture::ModelInfo;
use crate::info;

pub struct Mu;

const NAME: &str = "mu";

pub use crate::inputs::SurrogatePredictions;

impl Analyzer for Mu {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        2
    }
    fn description(&self) -> &'static str {
        "plug-in μ_Y(F;S) = I(F;Y) − I(F;Y|S) in bits against each surrogate, on the held-out split"
    }
    fn metrics(&self) -> &'static [&'static str] {
        &[
            "mu",
            "mu_mm",
            "n_cells_nonempty",
            "i_f_y",
            "i_f_y_given_s",
            "agreement",
            "surrogate_accuracy",
            "network_accuracy",
            "surrogate_train_accuracy",
            "surrogate_probe_accuracy",
        ]
    }
    fn needs(&self) -> Needs {
        Needs { surrogates: true, ..Needs::default() }
    }
    fn start(&self, model: &ModelInfo) -> Box<dyn Accumulator> {
        Box::new(MuAcc { classes: model.num_classes })
    }
}

struct MuAcc {
    classes: usize,
}

impl Accumulator for MuAcc {
    fn finish(self: Box<Self>, extras: &Extras<'_>) -> Result<Finished, AnalyzerError> {
        if extras.surrogates.is_empty() {
            return Err(AnalyzerError::NotApplicable { analyzer: NAME, message: "no surrogate was given".into() });
        }
        let mut out = Vec::new();
        for sp in extras.surrogates {
            let r = info::mu(&sp.f, &sp.s, &sp.y, self.classes);
            let tag = |m: MetricValue| m.with_surrogate(&sp.name).with_samples(sp.f.len() as u64, &sp.split);
            out.push(tag(MetricValue::model("mu", r.map(|r| r.mu))));
            // The K×K×K table is sparse when K is large (a vocabulary, or
            // the 113 residues of modular addition): the bias-corrected μ
            // and the number of filled cells say how far to trust `mu`.
            out.push(tag(MetricValue::model("mu_mm", r.map(|r| r.mu_mm))));
            out.push(tag(MetricValue::model("n_cells_nonempty", r.map(|r| r.n_cells_nonempty as f64))));
            out.push(tag(MetricValue::model("i_f_y", r.map(|r| r.i_f_y))));
            out.push(tag(MetricValue::model("i_f_y_given_s", r.map(|r| r.i_f_y_given_s))));
            out.push(tag(MetricValue::model("agreement", r.map(|r| r.agreement))));
            out.push(tag(MetricValue::model("surrogate_accuracy", r.map(|r| r.surrogate_accuracy))));
            let n = sp.f.len();
            let f_acc = (n > 0).then(|| sp.f.iter().zip(&sp.y).filter(|(a, b)| a == b).count() as f64 / n as f64);
            out.push(tag(MetricValue::model("network_accuracy", f_acc)));
            if let Some((acc, n)) = sp.train_accuracy {
                out.push(MetricValue::model("surrogate_train_accuracy", Some(acc)).with_surrogate(&sp.name).with_samples(n, "train"));
            }
            if let Some((acc, n)) = sp.probe_accuracy {
                out.push(MetricValue::model("surrogate_probe_accuracy", Some(acc)).with_surrogate(&sp.name).with_samples(n, "probe"));
            }
        }
        Ok(Finished::values(out))
    }
}
