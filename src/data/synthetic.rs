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
        let mut s = Split { x: Vec::with_capacity(n * d), y: Vec::with_capacity(n), sample_len: d };
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
        let mut s = Split { x: Vec::with_capacity(2 * n), y: Vec::with_capacity(n), sample_len: 2 };
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
