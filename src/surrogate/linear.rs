//! The `linear` surrogate of Kalimeris et al. (2019): multinomial logistic
//! regression on the normalised raw inputs, trained on the training split's
//! labels by full-batch L-BFGS, cached per dataset fingerprint so every run
//! on that dataset reuses it. On token data the inputs are the one-hot
//! tokens of every position (a linear model of the token sequence). On a
//! language-modelling corpus (one label per position) it is the bigram
//! model docs/metrics.md asks for: a multinomial logistic regression from the
//! one-hot current token to the next token, fitted on every (token, next
//! token) pair of the training text. That objective depends on the pairs
//! only through their K × K count table, so it is fitted on the table (the
//! same loss and optimum as on the 4.5 M one-hot rows, at a K-row cost).

use crate::atomic::write_atomic;
use crate::data::{Dataset, Split};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, D};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// L2 penalty on the weights (not the bias): loss = mean CE + λ/2 ‖W‖².
/// Small, so the fit is close to unregularised, but it keeps the optimum
/// finite on separable data.
pub const L2: f64 = 1e-4;
const MAX_ITER: usize = 500;
const HISTORY: usize = 10;

pub struct LinearModel {
    pub classes: usize,
    pub dim: usize,
    /// [classes, dim] row-major, then [classes].
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub train_accuracy: f64,
    pub iterations: usize,
    /// Token data: inputs are token ids in `0..vocab`, one-hot encoded
    /// position by position (`dim` = positions · vocab).
    pub vocab: Option<usize>,
}

impl LinearModel {
    /// Values per sample the model takes (token ids per sample on token data).
    pub fn input_len(&self) -> usize {
        self.vocab.map_or(self.dim, |v| self.dim / v)
    }

    pub fn predict(&self, x: &[f32], n: usize) -> Vec<usize> {
        let per = self.input_len();
        (0..n)
            .map(|i| {
                let row = &x[i * per..(i + 1) * per];
                let score = |c: usize| {
                    let w = &self.weight[c * self.dim..(c + 1) * self.dim];
                    self.bias[c]
                        + match self.vocab {
                            // W·onehot(x) = Σ_t W[:, t·vocab + x_t].
                            Some(v) => row.iter().enumerate().map(|(p, &tok)| w[p * v + (tok as usize).min(v - 1)]).sum::<f32>(),
                            None => w.iter().zip(row).map(|(a, b)| a * b).sum::<f32>(),
                        }
                };
                let mut best = (0, f32::NEG_INFINITY);
                for c in 0..self.classes {
                    let v = score(c);
                    if v > best.1 {
                        best = (c, v);
                    }
                }
                best.0
            })
            .collect()
    }
}

/// One-hot features of a token split: `positions · vocab` per sample.
fn one_hot(split: &Split, vocab: usize) -> Split {
    let t = split.sample_len;
    let mut x = vec![0f32; split.len() * t * vocab];
    for (i, row) in x.chunks_exact_mut(t * vocab).enumerate() {
        for (p, &tok) in split.sample(i).iter().enumerate() {
            row[p * vocab + (tok as usize).min(vocab - 1)] = 1.0;
        }
    }
    Split { x, y: split.y.clone(), sample_len: t * vocab, targets: 1 }
}

fn cache_path(dir: &Path, fingerprint: &str) -> PathBuf {
    dir.join(format!("linear-{fingerprint}-l2_{L2:e}.safetensors"))
}

/// The cached model for this dataset, or a freshly trained (and cached) one.
/// The fit runs on `device` (a GPU where there is one: CIFAR-10's 50,000 ×
/// 3,072 design matrix made the CPU fit the slowest step of an analysis).
pub fn get(data: &Dataset, cache_dir: &Path, quiet: bool, device: &Device) -> Result<LinearModel> {
    let path = cache_path(cache_dir, &data.fingerprint);
    if let Some(m) = read(&path) {
        return Ok(LinearModel { vocab: data.vocab, ..m });
    }
    if !quiet {
        eprintln!("training the linear surrogate (logistic regression, L-BFGS) on {} samples…", data.train.len());
    }
    let mut m = match data.vocab {
        Some(v) if data.train.targets > 1 => fit_bigram(&data.train, v)?,
        Some(v) => fit(&one_hot(&data.train, v), data.classes.len(), device)?,
        None => fit(&data.train, data.classes.len(), device)?,
    };
    m.vocab = data.vocab;
    write(&path, &m).with_context(|| format!("{}", path.display()))?;
    Ok(m)
}

/// Loss and gradient at θ = (W, b) for the whole split, via candle. Row r
/// of `x` stands for `weight[r]` samples whose labels are counted in row r
/// of `targets` (a one-hot row and weight 1 for a sample of its own).
struct Objective {
    x: Tensor,
    targets: Tensor,
    /// [rows, 1]: the row sums of `targets`.
    weight: Tensor,
    /// Samples in all (the mean's denominator).
    n: usize,
    k: usize,
    d: usize,
}

impl Objective {
    fn eval(&self, theta: &[f64]) -> Result<(f64, Vec<f64>)> {
        let (k, d) = (self.k, self.d);
        let dev = self.x.device();
        let w = Tensor::from_vec(theta[..k * d].iter().map(|&v| v as f32).collect::<Vec<f32>>(), (k, d), dev)?;
        let b = Tensor::from_vec(theta[k * d..].iter().map(|&v| v as f32).collect::<Vec<f32>>(), k, dev)?;
        let logits = self.x.matmul(&w.t()?)?.broadcast_add(&b)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let ce = -(logp.mul(&self.targets)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?) / self.n as f64;
        let g_logits = ((logp.exp()?.broadcast_mul(&self.weight)? - &self.targets)? / self.n as f64)?;
        let gw = g_logits.t()?.matmul(&self.x)?;
        let gb = g_logits.sum(0)?;
        let w64: Vec<f64> = theta[..k * d].to_vec();
        let loss = ce + 0.5 * L2 * w64.iter().map(|v| v * v).sum::<f64>();
        let mut grad: Vec<f64> = gw.flatten_all()?.to_vec1::<f32>()?.iter().map(|&v| v as f64).collect();
        for (g, w) in grad.iter_mut().zip(&w64) {
            *g += L2 * w;
        }
        grad.extend(gb.to_vec1::<f32>()?.iter().map(|&v| v as f64));
        Ok((loss, grad))
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Full-batch L-BFGS (two-loop recursion, Armijo backtracking).
pub fn fit(train: &Split, classes: usize, device: &Device) -> Result<LinearModel> {
    let (n, d, k) = (train.len(), train.sample_len, classes);
    let dev = device;
    let x = Tensor::from_slice(&train.x, (n, d), dev)?;
    let mut oh = vec![0f32; n * k];
    for (i, &y) in train.y.iter().enumerate() {
        oh[i * k + y as usize] = 1.0;
    }
    let obj = Objective { x, targets: Tensor::from_vec(oh, (n, k), dev)?, weight: Tensor::ones((n, 1), DType::F32, dev)?, n, k, d };
    let mut m = minimise(&obj)?;
    let pred = m.predict(&train.x, n);
    m.train_accuracy = pred.iter().zip(&train.y).filter(|(p, y)| **p == **y as usize).count() as f64 / n as f64;
    Ok(m)
}

/// The bigram model of a language-modelling split (windows of tokens, one
/// next-token label per position): logistic regression from the one-hot
/// current token to the next, fitted on the K × K table of pair counts.
pub fn fit_bigram(train: &Split, vocab: usize) -> Result<LinearModel> {
    let k = vocab;
    let mut counts = vec![0f64; k * k];
    for (&x, &y) in train.x.iter().zip(&train.y) {
        counts[(x as usize).min(k - 1) * k + y as usize] += 1.0;
    }
    let n = train.y.len();
    let dev = Device::Cpu;
    let row_sums: Vec<f32> = counts.chunks_exact(k).map(|r| r.iter().sum::<f64>() as f32).collect();
    let obj = Objective {
        x: Tensor::eye(k, DType::F32, &dev)?,
        targets: Tensor::from_vec(counts.iter().map(|&c| c as f32).collect::<Vec<f32>>(), (k, k), &dev)?,
        weight: Tensor::from_vec(row_sums, (k, 1), &dev)?,
        n,
        k,
        d: k,
    };
    let mut m = minimise(&obj)?;
    m.vocab = Some(k);
    // Accuracy on the training pairs, from the table: each current token's
    // pairs are predicted as that token's argmax.
    let pred = m.predict(&(0..k).map(|c| c as f32).collect::<Vec<f32>>(), k);
    let correct: f64 = pred.iter().enumerate().map(|(c, &p)| counts[c * k + p]).sum();
    m.train_accuracy = correct / n.max(1) as f64;
    Ok(m)
}

/// θ minimising `obj` by full-batch L-BFGS; `train_accuracy` left at 0.
fn minimise(obj: &Objective) -> Result<LinearModel> {
    let (k, d) = (obj.k, obj.d);
    let mut theta = vec![0.0f64; k * d + k];
    let (mut f, mut g) = obj.eval(&theta)?;
    let mut hist: Vec<(Vec<f64>, Vec<f64>, f64)> = Vec::new();
    let mut iterations = 0;
    for it in 0..MAX_ITER {
        iterations = it + 1;
        // Two-loop recursion: direction = −H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(hist.len());
        for (s, y, rho) in hist.iter().rev() {
            let a = rho * dot(s, &q);
            for (qi, yi) in q.iter_mut().zip(y) {
                *qi -= a * yi;
            }
            alphas.push(a);
        }
        if let Some((s, y, _)) = hist.last() {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|v| *v *= gamma);
        } else {
            let gn = dot(&g, &g).sqrt().max(1e-12);
            q.iter_mut().for_each(|v| *v /= gn);
        }
        for ((s, y, rho), a) in hist.iter().zip(alphas.iter().rev()) {
            let beta = rho * dot(y, &q);
            for (qi, si) in q.iter_mut().zip(s) {
                *qi += (a - beta) * si;
            }
        }
        let mut dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        if slope >= 0.0 {
            hist.clear();
            dir = g.iter().map(|v| -v).collect();
            slope = dot(&g, &dir);
        }
        let mut t = 1.0;
        let (mut f_new, mut g_new, mut theta_new);
        loop {
            theta_new = theta.iter().zip(&dir).map(|(a, b)| a + t * b).collect::<Vec<f64>>();
            (f_new, g_new) = obj.eval(&theta_new)?;
            if f_new <= f + 1e-4 * t * slope || t < 1e-10 {
                break;
            }
            t *= 0.5;
        }
        let s: Vec<f64> = theta_new.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            hist.push((s, y, 1.0 / sy));
            if hist.len() > HISTORY {
                hist.remove(0);
            }
        }
        let converged = (f - f_new).abs() <= 1e-10 * f.abs().max(1.0) || g_new.iter().fold(0.0f64, |m, v| m.max(v.abs())) < 1e-6;
        theta = theta_new;
        f = f_new;
        g = g_new;
        if converged {
            break;
        }
    }
    let m = LinearModel {
        classes: k,
        dim: d,
        weight: theta[..k * d].iter().map(|&v| v as f32).collect(),
        bias: theta[k * d..].iter().map(|&v| v as f32).collect(),
        train_accuracy: 0.0,
        iterations,
        vocab: None,
    };
    Ok(m)
}

fn read(path: &Path) -> Option<LinearModel> {
    let bytes = std::fs::read(path).ok()?;
    let (_, header) = SafeTensors::read_metadata(&bytes).ok()?;
    let md = header.metadata().clone()?;
    let st = SafeTensors::deserialize(&bytes).ok()?;
    let f32s = |name: &str| -> Option<(Vec<usize>, Vec<f32>)> {
        let t = st.tensor(name).ok()?;
        Some((t.shape().to_vec(), t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
    };
    let (ws, weight) = f32s("weight")?;
    let (_, bias) = f32s("bias")?;
    Some(LinearModel {
        classes: ws[0],
        dim: ws[1],
        weight,
        bias,
        train_accuracy: md.get("train_accuracy")?.parse().ok()?,
        iterations: md.get("iterations")?.parse().ok()?,
        vocab: None,
    })
}

fn write(path: &Path, m: &LinearModel) -> Result<()> {
    let w: Vec<u8> = m.weight.iter().flat_map(|v| v.to_le_bytes()).collect();
    let b: Vec<u8> = m.bias.iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = vec![
        ("weight", TensorView::new(Dtype::F32, vec![m.classes, m.dim], &w)?),
        ("bias", TensorView::new(Dtype::F32, vec![m.classes], &b)?),
    ];
    let md = HashMap::from([
        ("train_accuracy".to_string(), m.train_accuracy.to_string()),
        ("iterations".to_string(), m.iterations.to_string()),
        ("l2".to_string(), L2.to_string()),
    ]);
    write_atomic(path, &crate::checkpoint::canonical_header(safetensors::serialize(views, Some(md))?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bigram fit is the logistic regression on one-hot current tokens;
    /// with a tiny L2 its softmax is the empirical next-token distribution
    /// of each current token (the regression's optimum), and it predicts
    /// each token's most frequent successor.
    #[test]
    fn bigram_model_learns_the_next_token_distribution() {
        // Token 0 → 1 (3×) or 2 (2×); 1 → 0 (3×); 2 → 0 (2×) or 2 (2×):
        // one window of 12 tokens with its 12 next tokens.
        let x: Vec<f32> = [0, 1, 0, 1, 0, 1, 0, 2, 0, 2, 2, 2].iter().map(|&v| v as f32).collect();
        let y: Vec<u32> = vec![1, 0, 1, 0, 1, 0, 2, 0, 2, 2, 2, 0];
        let split = Split { x: x.clone(), y, sample_len: 12, targets: 12 };
        let m = fit_bigram(&split, 3).unwrap();
        assert_eq!((m.vocab, m.input_len(), m.classes), (Some(3), 1, 3));
        let probs = |c: usize| {
            let s: Vec<f64> = (0..3).map(|k| (m.weight[k * 3 + c] + m.bias[k]) as f64).collect();
            let z: f64 = s.iter().map(|v| v.exp()).sum();
            s.iter().map(|v| v.exp() / z).collect::<Vec<f64>>()
        };
        for (c, want) in [(0, [0.0, 0.6, 0.4]), (1, [1.0, 0.0, 0.0]), (2, [0.5, 0.0, 0.5])] {
            let p = probs(c);
            for k in 0..3 {
                // Zero counts are approached, not reached (finite weights).
                assert!((p[k] - want[k]).abs() < 0.02, "p(next {k} | {c}) = {} vs {}", p[k], want[k]);
            }
        }
        assert_eq!(m.predict(&[0.0, 1.0], 2), vec![1, 0]);
        // Per position of a window: predict reads one token per row.
        assert_eq!(m.predict(&x[..3], 3), vec![1, 0, 1]);
        // 3 + 3 + 2 of the 12 pairs follow their token's argmax (token 2's
        // tie goes either way: 2 of its 4 pairs).
        assert!((m.train_accuracy - 8.0 / 12.0).abs() < 1e-9, "{}", m.train_accuracy);
    }
}
