//! `performance`: probe loss (mean cross-entropy, nats) and accuracy.

use crate::analyzer::{Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
use crate::capture::{Chunk, ModelInfo};
use crate::inputs::row_score;
pub use crate::inputs::{argmax, cross_entropy};
use rayon::prelude::*;

pub struct Performance;

const NAME: &str = "performance";

impl Analyzer for Performance {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "mean cross-entropy (nats) and accuracy of the logits on the probe"
    }
    fn metrics(&self) -> &'static [&'static str] {
        &["loss", "accuracy"]
    }
    fn needs(&self) -> Needs {
        Needs { logits: true, ..Needs::default() }
    }
    fn start(&self, model: &ModelInfo) -> Box<dyn Accumulator> {
        Box::new(PerfAcc { classes: model.num_classes, loss: 0.0, correct: 0, n: 0 })
    }
}

struct PerfAcc {
    classes: usize,
    loss: f64,
    correct: u64,
    n: u64,
}

impl Accumulator for PerfAcc {
    fn observe(&mut self, chunk: &Chunk<'_>) -> Result<(), AnalyzerError> {
        let logits = chunk.logits;
        if logits.cols != self.classes || logits.rows != chunk.labels.len() {
            return Err(AnalyzerError::Shape {
                analyzer: NAME,
                message: format!("logits {} × {} for {} labels and {} classes", logits.rows, logits.cols, chunk.labels.len(), self.classes),
            });
        }
        // Rows in parallel (a language model's rows are 50,000 logits wide),
        // summed in row order as one loop would.
        let classes = self.classes;
        let rows: Vec<(f64, bool)> = chunk
            .labels
            .par_iter()
            .enumerate()
            .map(|(i, &y)| {
                let y = usize::try_from(y)
                    .ok()
                    .filter(|&y| y < classes)
                    .ok_or_else(|| AnalyzerError::Shape { analyzer: NAME, message: format!("label {y} outside 0..{classes}") })?;
                let row = logits.row(i);
                let (best, loss) = row_score(row, y);
                Ok((loss, best == y))
            })
            .collect::<Result<_, AnalyzerError>>()?;
        for (loss, correct) in rows {
            self.loss += loss;
            self.correct += correct as u64;
        }
        self.n += chunk.labels.len() as u64;
        Ok(())
    }

    fn finish(self: Box<Self>, _extras: &Extras<'_>) -> Result<Finished, AnalyzerError> {
        let n = self.n as f64;
        let defined = self.n > 0;
        Ok(Finished::values(vec![
            MetricValue::model("loss", defined.then(|| self.loss / n)),
            MetricValue::model("accuracy", defined.then(|| self.correct as f64 / n)),
        ]))
    }
}
