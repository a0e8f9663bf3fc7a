//! `attention`: how close each attention head is to uniform averaging (a
//! linear operation on the values) or to one-hot selection, per docs/metrics.md
//! ("Sequence models"):
//! - `attention_entropy` = mean over queries of H(query's attention row) /
//!   ln(number of keys it may attend to); queries with one admissible key
//!   (the first position under a causal mask) are skipped;
//! - `attention_max` = mean over queries of the row's largest weight.
//!
//! Rows are computed in f64 on the model's device; only per-head sums come
//! to the host.

use crate::analyzer::{Accumulator, Analyzer, AnalyzerError, Extras, Finished, MetricValue, Needs};
use crate::capture::{AttentionInfo, Chunk, ModelInfo};
use candle_core::{DType, Tensor, D};
use rayon::prelude::*;

pub struct Attention;

const NAME: &str = "attention";

impl Analyzer for Attention {
    fn name(&self) -> &'static str {
        NAME
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "per attention head: normalised entropy of the attention rows (1 = uniform, 0 = one-hot) and the mean largest weight"
    }
    fn metrics(&self) -> &'static [&'static str] {
        &["attention_entropy", "attention_max"]
    }
    fn needs(&self) -> Needs {
        Needs { attention: true, ..Needs::default() }
    }
    fn start(&self, model: &ModelInfo) -> Box<dyn Accumulator> {
        let sums = model.attention.iter().map(|a| HeadSums::new(a.heads)).collect();
        Box::new(AttentionAcc { layers: model.attention.clone(), sums })
    }
}

/// Per head: Σ normalised entropies and their count, Σ row maxima and theirs.
struct HeadSums {
    entropy: Vec<f64>,
    entropy_n: f64,
    max: Vec<f64>,
    max_n: f64,
}

impl HeadSums {
    fn new(heads: usize) -> Self {
        HeadSums { entropy: vec![0.0; heads], entropy_n: 0.0, max: vec![0.0; heads], max_n: 0.0 }
    }
}

struct AttentionAcc {
    layers: Vec<AttentionInfo>,
    sums: Vec<HeadSums>,
}

/// 1 / ln(admissible keys) for each query position, 0 where there is only
/// one admissible key (skipped), and how many queries count.
pub fn entropy_weights(info: &AttentionInfo) -> (Vec<f64>, usize) {
    let t = info.positions;
    let w: Vec<f64> = (0..t)
        .map(|i| {
            let keys = if info.causal { i + 1 } else { t };
            if keys > 1 {
                1.0 / (keys as f64).ln()
            } else {
                0.0
            }
        })
        .collect();
    let n = w.iter().filter(|&&v| v > 0.0).count();
    (w, n)
}

/// Per head, Σ over samples and queries of w_q · H(row) and of the row's
/// largest weight, where H = −Σ p ln p (p = 0 contributes 0), for weights
/// `att` [b, h, t, t], as tensor operations on the device.
fn device_sums(att: &Tensor, tq: usize, w: Vec<f64>) -> candle_core::Result<(Vec<f64>, Vec<f64>)> {
    let p = att.to_dtype(DType::F64)?;
    let plogp = (&p * p.clamp(1e-300, 1.0)?.log()?)?;
    let entropy = plogp.sum(D::Minus1)?.neg()?; // [b, h, t]
    let w = Tensor::from_vec(w, (1, 1, tq), att.device())?;
    let per_head = |t: Tensor| -> candle_core::Result<Vec<f64>> { t.sum(2)?.sum(0)?.to_vec1::<f64>() };
    Ok((per_head(entropy.broadcast_mul(&w)?)?, per_head(p.max(D::Minus1)?)?))
}

/// [`device_sums`] on the CPU in one pass over the f32 weights, parallel
/// over (sample, head) blocks: the tensor route made an f64 copy and ran
/// its logarithm on one core (a 160M language model's weights are 300M
/// values per probe).
fn host_sums(att: &Tensor, heads: usize, t: usize, w: &[f64]) -> candle_core::Result<(Vec<f64>, Vec<f64>)> {
    crate::stats::with_cpu_f32(att, |data| {
        let blocks: Vec<(f64, f64)> = data
            .par_chunks(t * t)
            .map(|block| {
                let (mut e, mut m) = (0.0, 0.0);
                for (q, row) in block.chunks(t).enumerate() {
                    let h: f64 = row.iter().filter(|&&p| p > 0.0).map(|&p| -(p as f64) * (p as f64).ln()).sum();
                    e += w[q] * h;
                    m += row.iter().fold(f32::NEG_INFINITY, |a, &p| a.max(p)) as f64;
                }
                (e, m)
            })
            .collect();
        let (mut e, mut m) = (vec![0.0; heads], vec![0.0; heads]);
        for (i, (be, bm)) in blocks.into_iter().enumerate() {
            e[i % heads] += be;
            m[i % heads] += bm;
        }
        (e, m)
    })
}

impl Accumulator for AttentionAcc {
    fn observe(&mut self, chunk: &Chunk<'_>) -> Result<(), AnalyzerError> {
        if chunk.attention.len() != self.layers.len() {
            return Err(AnalyzerError::Shape {
                analyzer: NAME,
                message: format!("expected {} attention layers, got {}", self.layers.len(), chunk.attention.len()),
            });
        }
        let err = AnalyzerError::compute(NAME);
        for ((info, sums), att) in self.layers.iter().zip(&mut self.sums).zip(chunk.attention) {
            let (b, h, tq, tk) = att.dims4().map_err(&err)?;
            if h != info.heads || tq != info.positions || tk != info.positions {
                return Err(AnalyzerError::Shape {
                    analyzer: NAME,
                    message: format!(
                        "{}: expected [samples, {}, {t}, {t}] attention weights, got {:?}",
                        info.name,
                        info.heads,
                        att.dims(),
                        t = info.positions
                    ),
                });
            }
            let (w, n_queries) = entropy_weights(info);
            let (e, m) = if att.device().is_cpu() { host_sums(att, h, tq, &w) } else { device_sums(att, tq, w) }.map_err(&err)?;
            for k in 0..h {
                sums.entropy[k] += e[k];
                sums.max[k] += m[k];
            }
            sums.entropy_n += (b * n_queries) as f64;
            sums.max_n += (b * tq) as f64;
        }
        Ok(())
    }

    fn finish(self: Box<Self>, _extras: &Extras<'_>) -> Result<Finished, AnalyzerError> {
        if self.layers.is_empty() {
            return Err(AnalyzerError::NotApplicable { analyzer: NAME, message: "the model has no attention layers".into() });
        }
        let mut out = Vec::new();
        for (i, (info, s)) in self.layers.iter().zip(&self.sums).enumerate() {
            for k in 0..info.heads {
                let mean = |sum: f64, n: f64| (n > 0.0).then(|| sum / n);
                out.push(MetricValue::attention_head(i, k, info.tap, "attention_entropy", mean(s.entropy[k], s.entropy_n)));
                out.push(MetricValue::attention_head(i, k, info.tap, "attention_max", mean(s.max[k], s.max_n)));
            }
        }
        Ok(Finished::values(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Matrix;
    use candle_core::Device;

    fn run(info: AttentionInfo, att: Tensor) -> Vec<MetricValue> {
        let model = ModelInfo { taps: vec![], residual_blocks: vec![], attention: vec![info], num_classes: 2, n_probe: att.dims()[0] };
        let mut acc = Attention.start(&model);
        let b = att.dims()[0];
        let labels = vec![0i64; b];
        let logits = vec![0f32; 2 * b];
        let atts = [att];
        let chunk =
            Chunk { taps: &[], samples: b, logits: Matrix::new(b, 2, &logits), labels: &labels, first: 0, streams: &[], attention: &atts };
        acc.observe(&chunk).unwrap();
        acc.finish(&Extras::default()).unwrap().values
    }

    fn value(v: &[MetricValue], metric: &str, head: usize) -> f64 {
        v.iter().find(|m| m.metric == metric && m.head == Some((0, head))).unwrap().value.unwrap()
    }

    #[test]
    fn the_cpu_pass_and_the_device_operations_agree() {
        // Softmax rows with exact zeros (a causal mask) and a non-contiguous input.
        let (b, h, t) = (3, 4, 7);
        let scores = Tensor::randn(0f32, 2.0, (b, h, t, t + 1), &Device::Cpu).unwrap().narrow(3, 1, t).unwrap();
        let mask: Vec<f32> = (0..t * t).map(|ij| if ij % t > ij / t { f32::NEG_INFINITY } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
        let att = candle_nn_softmax(&scores.broadcast_add(&mask).unwrap());
        let info = AttentionInfo { name: "a".into(), heads: h, positions: t, causal: true, tap: 0 };
        let (w, _) = entropy_weights(&info);
        let (he, hm) = host_sums(&att, h, t, &w).unwrap();
        let (de, dm) = device_sums(&att, t, w).unwrap();
        for k in 0..h {
            assert!((he[k] - de[k]).abs() < 1e-9 * de[k].abs().max(1.0), "{k}: {} vs {}", he[k], de[k]);
            assert!((hm[k] - dm[k]).abs() < 1e-12, "{k}");
        }
    }

    /// softmax over the last dimension (the analyzers crate has no candle_nn).
    fn candle_nn_softmax(x: &Tensor) -> Tensor {
        let e = x.broadcast_sub(&x.max_keepdim(D::Minus1).unwrap()).unwrap().exp().unwrap();
        e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
    }

    #[test]
    fn uniform_attention_has_entropy_one_and_one_hot_zero() {
        let t = 5;
        let info = |causal| AttentionInfo { name: "a".into(), heads: 2, positions: t, causal, tap: 0 };
        // Head 0 uniform over the admissible keys, head 1 one-hot on key 0.
        for causal in [false, true] {
            let mut v = Vec::new();
            for _sample in 0..3 {
                for head in 0..2 {
                    for q in 0..t {
                        let keys = if causal { q + 1 } else { t };
                        for k in 0..t {
                            v.push(match head {
                                0 if k < keys => 1.0 / keys as f32,
                                0 => 0.0,
                                _ => f32::from(k == 0),
                            });
                        }
                    }
                }
            }
            let att = Tensor::from_vec(v, (3, 2, t, t), &Device::Cpu).unwrap();
            let out = run(info(causal), att);
            // (Weights are f32: 1/k is not exact.)
            let e = value(&out, "attention_entropy", 0);
            assert!((e - 1.0).abs() < 1e-6, "causal {causal}: uniform entropy {e}");
            assert!(value(&out, "attention_entropy", 1).abs() < 1e-12);
            assert!((value(&out, "attention_max", 1) - 1.0).abs() < 1e-12);
            let expect_max = if causal { (1..=t).map(|k| 1.0 / k as f64).sum::<f64>() / t as f64 } else { 1.0 / t as f64 };
            assert!((value(&out, "attention_max", 0) - expect_max).abs() < 1e-7);
        }
    }
}
