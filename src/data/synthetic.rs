//! Synthetic tasks that need no files.

use super::{DataConfig, RawData, Split};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// `synthetic_classes` isotropic Gaussians in `synthetic_dim` dimensions,
/// unit variance, centres drawn from N(0, 2²·I) (so classes overlap a little).
pub fn gaussian_mixture(cfg: &DataConfig) -> RawData {
    let (k, d) = (cfg.synthetic_classes.max(2), cfg.synthetic_dim.max(1));
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.data_seed);
    let centres: Vec<f32> = (0..k * d).map(|_| 2.0 * Distribution::<f32>::sample(&StandardNormal, &mut rng)).collect();
    let mut draw = |n: usize| {
        let mut s = Split { x: Vec::with_capacity(n * d), y: Vec::with_capacity(n), sample_len: d, targets: 1 };
        for i in 0..n {
            let c = i % k;
            s.y.push(c as u32);
            for j in 0..d {
                let noise: f32 = StandardNormal.sample(&mut rng);
                s.x.push(centres[c * d + j] + noise);
            }
        }
        s
    };
    let train = draw(cfg.n_train);
    let test = draw(cfg.n_test);
    RawData { sample_shape: vec![d], classes: (0..k).map(|c| format!("component_{c}")).collect(), train, test }
}

/// Kalimeris et al. (2019)'s 2-D task: points uniform in the unit disc,
/// label 1 above the curve x₂ = 0.25·sin(3π·x₁) (about three half-periods
/// across the disc), with 10% of labels flipped at random.
pub fn sinusoid_2d(cfg: &DataConfig) -> RawData {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.data_seed);
    let mut draw = |n: usize| {
        let mut s = Split { x: Vec::with_capacity(2 * n), y: Vec::with_capacity(n), sample_len: 2, targets: 1 };
        while s.len() < n {
            let (a, b): (f32, f32) = (rng.gen_range(-1.0..1.0), rng.gen_range(-1.0..1.0));
            if a * a + b * b > 1.0 {
                continue;
            }
            let clean = b > 0.25 * (3.0 * std::f32::consts::PI * a).sin();
            let flip = rng.gen_bool(0.1);
            s.x.extend_from_slice(&[a, b]);
            s.y.push((clean ^ flip) as u32);
        }
        s
    };
    let train = draw(cfg.n_train);
    let test = draw(cfg.n_test);
    RawData { sample_shape: vec![2], classes: vec!["below".into(), "above".into()], train, test }
}

/// Modular addition (Power et al., 2022; Nanda et al., 2023): every pair
/// (a, b) in 0..p as the token sequence [a, b, =] (`=` is token p), labelled
/// (a + b) mod p. A seeded shuffle of all p² pairs puts `train_fraction`
/// of them in the training split and the rest in the test split. Inputs are
/// token ids (stored as f32, exact below 2^24).
pub fn modular_addition(cfg: &DataConfig) -> anyhow::Result<RawData> {
    use rand::seq::SliceRandom;
    let p = cfg.modulus.unwrap_or(DEFAULT_MODULUS);
    let frac = cfg.train_fraction.unwrap_or(DEFAULT_TRAIN_FRACTION);
    if !(2..=4096).contains(&p) {
        anyhow::bail!("modulus must be between 2 and 4096, got {p}");
    }
    if !(frac > 0.0 && frac < 1.0) {
        anyhow::bail!("train_fraction must be in (0, 1), got {frac}");
    }
    let mut pairs: Vec<(usize, usize)> = (0..p).flat_map(|a| (0..p).map(move |b| (a, b))).collect();
    pairs.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.data_seed));
    let n_train = ((pairs.len() as f64 * frac).round() as usize).clamp(1, pairs.len() - 1);
    let split = |pairs: &[(usize, usize)]| {
        let mut s = Split { x: Vec::with_capacity(3 * pairs.len()), y: Vec::with_capacity(pairs.len()), sample_len: 3, targets: 1 };
        for &(a, b) in pairs {
            s.x.extend_from_slice(&[a as f32, b as f32, p as f32]);
            s.y.push(((a + b) % p) as u32);
        }
        s
    };
    Ok(RawData {
        sample_shape: vec![3],
        classes: (0..p).map(|c| c.to_string()).collect(),
        train: split(&pairs[..n_train]),
        test: split(&pairs[n_train..]),
    })
}

/// Nanda et al.'s modulus and training fraction.
pub const DEFAULT_MODULUS: usize = 113;
pub const DEFAULT_TRAIN_FRACTION: f64 = 0.3;
