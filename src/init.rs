//! Parameter initialisation. Values are drawn on the CPU from a seeded
//! ChaCha stream in the spec's tensor order, so a (spec, scheme, seed)
//! triple always gives the same step-0 checkpoint, on any device.

use crate::spec::{ExtraInit, ModelSpec};
use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitScheme {
    /// `torch.nn.Linear`/`Conv2d` defaults: weight and bias U(±1/√fan_in).
    Pytorch,
    /// He et al.: N(0, 2/fan_in), zero bias.
    KaimingNormal,
    /// Glorot & Bengio, uniform: U(±√(6/(fan_in+fan_out))), zero bias.
    Xavier,
    /// Saxe et al.: a random orthogonal `out × fan_in` matrix, zero bias.
    Orthogonal,
    /// GPT-2 (as nanoGPT's `_init_weights`): weights and embeddings
    /// N(0, 0.02²), zero bias, and the projections back into a
    /// transformer's residual stream (`attn.c_proj`/`attn.proj`,
    /// `mlp.c_proj`/`mlp.fc2`) N(0, (0.02/√(2·blocks))²).
    Gpt2,
}

impl InitScheme {
    pub fn parse(s: &str) -> Result<Self> {
        match serde_json::from_value(serde_json::Value::String(s.replace('_', "-"))) {
            Ok(v) => Ok(v),
            Err(_) => {
                bail!("unknown init '{s}' (expected pytorch, kaiming-normal, xavier, orthogonal or gpt2)")
            }
        }
    }
}

/// Every tensor of the model, (name, shape, values), in `spec.tensor_shapes()`
/// order; weights are multiplied by `scale`.
pub fn init_params(spec: &ModelSpec, scheme: InitScheme, scale: f64, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for layer in spec.layers() {
        let (fan_in, fan_out) = (layer.fan_in() as f64, layer.fan_out() as f64);
        let rows = layer.weight_shape[0];
        let numel = rows * layer.fan_in();
        let uniform = |rng: &mut ChaCha8Rng, bound: f64, n: usize| -> Vec<f64> { (0..n).map(|_| rng.gen_range(-bound..=bound)).collect() };
        let (weight, bias): (Vec<f64>, Vec<f64>) = match scheme {
            InitScheme::Pytorch => {
                let b = 1.0 / fan_in.sqrt();
                let w = uniform(&mut rng, b, numel);
                // Bias-free layers (ResNet convolutions) draw no bias.
                (w, if layer.bias { uniform(&mut rng, b, rows) } else { Vec::new() })
            }
            InitScheme::KaimingNormal => {
                let std = (2.0 / fan_in).sqrt();
                let w = (0..numel).map(|_| std * Distribution::<f64>::sample(&StandardNormal, &mut rng)).collect::<Vec<f64>>();
                (w, vec![0.0; rows])
            }
            InitScheme::Xavier => (uniform(&mut rng, (6.0 / (fan_in + fan_out)).sqrt(), numel), vec![0.0; rows]),
            InitScheme::Orthogonal => (orthogonal(&mut rng, rows, layer.fan_in()), vec![0.0; rows]),
            InitScheme::Gpt2 => {
                let residual = [".attn.c_proj", ".mlp.c_proj", ".attn.proj", ".mlp.fc2"].iter().any(|s| layer.name.ends_with(s));
                let std = if residual { 0.02 / (2.0 * spec.num_taps().max(1) as f64).sqrt() } else { 0.02 };
                (normal(&mut rng, std, numel), vec![0.0; rows])
            }
        };
        out.push((format!("{}.weight", layer.name), layer.weight_shape.clone(), weight.iter().map(|v| (v * scale) as f32).collect()));
        if layer.bias {
            out.push((format!("{}.bias", layer.name), vec![rows], bias.iter().map(|&v| v as f32).collect()));
        }
    }
    // BatchNorm as PyTorch initialises it (after every layer's draw, so the
    // layers' weights do not depend on whether there is BatchNorm).
    for (bn, c) in spec.batch_norms() {
        for (t, v) in [("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)] {
            out.push((format!("{bn}.{t}"), vec![c], vec![v; c]));
        }
    }
    // Embeddings, class token and LayerNorms (transformers), after the layers.
    for e in spec.extra_tensors() {
        let n: usize = e.shape.iter().product();
        let values: Vec<f64> = match e.init {
            ExtraInit::Ones => vec![1.0; n],
            ExtraInit::Zeros => vec![0.0; n],
            // nn.Embedding's N(0, 1); GPT-2's N(0, 0.02²).
            ExtraInit::Embedding => normal(&mut rng, if scheme == InitScheme::Gpt2 { 0.02 } else { 1.0 } * scale, n),
            ExtraInit::Normal(std) => normal(&mut rng, std * scale, n),
        };
        out.push((e.name, e.shape, values.into_iter().map(|v| v as f32).collect()));
    }
    out
}

fn normal(rng: &mut ChaCha8Rng, std: f64, n: usize) -> Vec<f64> {
    (0..n).map(|_| std * Distribution::<f64>::sample(&StandardNormal, rng)).collect()
}

/// A `rows × cols` matrix with orthonormal rows (rows ≤ cols) or columns,
/// as `torch.nn.init.orthogonal_`: QR of a Gaussian matrix, signs fixed by
/// R's diagonal so that the draw is uniform (Haar).
fn orthogonal(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Vec<f64> {
    let (m, n) = if rows < cols { (cols, rows) } else { (rows, cols) };
    let g = faer::Mat::<f64>::from_fn(m, n, |_, _| StandardNormal.sample(rng));
    let qr = g.qr();
    let q = qr.compute_thin_Q();
    let r = qr.thin_R();
    let mut out = vec![0.0; rows * cols];
    for i in 0..m {
        for j in 0..n {
            let v = q[(i, j)] * r[(j, j)].signum();
            if rows < cols {
                out[j * cols + i] = v;
            } else {
                out[i * cols + j] = v;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ModelSpec {
        ModelSpec::from_json(r#"{"spec_version":1,"kind":"mlp","input_shape":[20],"num_classes":3,"hidden":[8,30],"activation":"relu"}"#)
            .unwrap()
    }

    #[test]
    fn orthogonal_rows_are_orthonormal() {
        for (name, shape, w) in init_params(&spec(), InitScheme::Orthogonal, 1.0, 7) {
            if !name.ends_with("weight") {
                continue;
            }
            let (r, c) = (shape[0], shape[1]);
            // The smaller side is orthonormal.
            let (outer, inner, stride_o, stride_i) = if r <= c { (r, c, c, 1) } else { (c, r, 1, c) };
            for a in 0..outer {
                for b in 0..outer {
                    let dot: f64 = (0..inner).map(|k| w[a * stride_o + k * stride_i] as f64 * w[b * stride_o + k * stride_i] as f64).sum();
                    assert!((dot - (a == b) as u8 as f64).abs() < 1e-5, "{name} {a},{b}: {dot}");
                }
            }
        }
    }

    #[test]
    fn pytorch_default_bounds_and_determinism() {
        let a = init_params(&spec(), InitScheme::Pytorch, 1.0, 3);
        let b = init_params(&spec(), InitScheme::Pytorch, 1.0, 3);
        assert_eq!(a, b);
        let (_, _, w0) = &a[0];
        let bound = 1.0 / (20f32).sqrt();
        assert!(w0.iter().all(|v| v.abs() <= bound));
        assert!(w0.iter().any(|v| v.abs() > 0.5 * bound));
        assert_ne!(a, init_params(&spec(), InitScheme::Pytorch, 1.0, 4));
    }
}
