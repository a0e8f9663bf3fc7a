//! The properties docs/metrics.md states for each analyzer, on synthetic taps.

use analyzers::stats::PairedMoments;
use analyzers::{
    all_analyzers, by_name, ActivationKind, BlockGeometry, Chunk, Extras, LayerKind, Matrix, MetricValue, ModelInfo, TapChunk, TapInfo,
};
use candle_core::{Device, Tensor};

/// A small deterministic generator (no dependency needed for test data).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn info(units: usize, act: ActivationKind) -> ModelInfo {
    ModelInfo {
        residual_blocks: Vec::new(),
        attention: Vec::new(),
        taps: vec![TapInfo {
            index: 0,
            activation: act,
            layer_kind: LayerKind::Dense,
            units,
            input_units: units,
            block: BlockGeometry::Dense { features: units },
        }],
        num_classes: 3,
        n_probe: 0,
    }
}

/// Runs one analyzer on one tap (z, a) of n samples, in chunks of `chunk`,
/// as the driver does (chunks as CPU tensors, unit moments shared through
/// the extras); the moments are computed on both the CPU's fused path and
/// the device (tensor) path, which must agree.
fn run(name: &str, act: ActivationKind, n: usize, units: usize, z: &[f32], a: &[f32], chunk: usize) -> Vec<MetricValue> {
    let analyzer = by_name(name).unwrap();
    let mi = info(units, act);
    let mut acc = analyzer.start(&mi);
    let logits = vec![0.0f32; n * 3];
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
    let (mut host, mut device) = (PairedMoments::new(units), PairedMoments::tensor_path(units));
    let mut s = 0;
    while s < n {
        let e = (s + chunk).min(n);
        let t = |v: &[f32]| Tensor::from_slice(&v[s * units..e * units], (e - s, units), &Device::Cpu).unwrap();
        let (zt, at) = (t(z), t(a));
        let taps = [TapChunk { input: Some(&zt), z: &zt, a: &at }];
        acc.observe(&Chunk {
            taps: &taps,
            samples: e - s,
            logits: Matrix::new(e - s, 3, &logits[s * 3..e * 3]),
            labels: &labels[s..e],
            first: s,
            streams: &[],
            attention: &[],
        })
        .unwrap();
        host.observe(&zt, &at).unwrap();
        device.observe(&zt, &at).unwrap();
        s = e;
    }
    let (mh, md) = (host.finish().unwrap(), device.finish().unwrap());
    let out = acc.finish(&Extras { labels: &labels, moments: Some(std::slice::from_ref(&mh)), ..Extras::default() }).unwrap().values;
    let again = analyzer.start(&mi).finish(&Extras { labels: &labels, moments: Some(std::slice::from_ref(&md)), ..Extras::default() });
    if analyzer.needs().moments {
        for (x, y) in out.iter().zip(again.unwrap().values) {
            let close = match (x.value, y.value) {
                (Some(p), Some(q)) => (p - q).abs() <= 1e-9 * p.abs().max(1.0),
                (p, q) => p == q,
            };
            assert!(close, "{name} {}: fused CPU path {:?} vs tensor path {:?}", x.metric, x.value, y.value);
        }
    }
    out
}

fn get(v: &[MetricValue], metric: &str) -> Option<f64> {
    v.iter().find(|m| m.metric == metric).unwrap_or_else(|| panic!("no {metric}")).value
}

fn random(n: usize, seed: u64, shift: f32) -> Vec<f32> {
    let mut g = Lcg(seed);
    (0..n).map(|_| g.next() + shift).collect()
}

fn relu(z: &[f32]) -> Vec<f32> {
    z.iter().map(|v| v.max(0.0)).collect()
}

#[test]
fn identity_activation_is_exactly_linear() {
    let z = random(200 * 6, 1, 0.0);
    let v = run("unit_linear_fit", ActivationKind::Identity, 200, 6, &z, &z, 64);
    assert!(get(&v, "nonlinearity").unwrap().abs() < 1e-12);
    assert!((get(&v, "mean_unit_r2").unwrap() - 1.0).abs() < 1e-12);
}

#[test]
fn relu_units_that_never_switch_are_linear() {
    // Units 0..3 always on (z in [2, 4]), units 3..6 always off (z in [-4, -2]).
    let n = 100;
    let mut z = random(n * 6, 2, 0.0);
    for (k, v) in z.iter_mut().enumerate() {
        *v = if k % 6 < 3 { *v + 3.0 } else { *v - 3.0 };
    }
    let a = relu(&z);
    let fit = run("unit_linear_fit", ActivationKind::Relu, n, 6, &z, &a, 17);
    assert!(get(&fit, "nonlinearity").unwrap() < 1e-12);
    assert_eq!(get(&fit, "n_units_varying"), Some(3.0));
    let regime = run("activation_regime", ActivationKind::Relu, n, 6, &z, &a, 17);
    assert_eq!(get(&regime, "frac_always_on"), Some(0.5));
    assert_eq!(get(&regime, "frac_always_off"), Some(0.5));
    assert_eq!(get(&regime, "frac_switching"), Some(0.0));
    assert_eq!(get(&regime, "pattern_entropy"), Some(0.0));
}

#[test]
fn all_positive_preactivations_give_an_always_on_layer() {
    let z = random(50 * 4, 3, 2.0);
    let regime = run("activation_regime", ActivationKind::Relu, 50, 4, &z, &relu(&z), 50);
    assert_eq!(get(&regime, "frac_always_on"), Some(1.0));
    assert_eq!(get(&regime, "frac_active"), Some(1.0));
    assert_eq!(get(&regime, "frac_switching"), Some(0.0));
    assert_eq!(get(&regime, "pattern_entropy"), Some(0.0));
}

#[test]
fn switching_relu_is_nonlinear_and_bounded() {
    let z = random(400 * 5, 4, 0.0);
    let a = relu(&z);
    let fit = run("unit_linear_fit", ActivationKind::Relu, 400, 5, &z, &a, 33);
    let nl = get(&fit, "nonlinearity").unwrap();
    // z uniform on [-1, 1]: Var(a) = 5/48, Cov(z, a)²/Var(z) = 4/48, so the
    // residual share is exactly 1/5 in the population.
    assert!((nl - 0.2).abs() < 0.03, "{nl}");
    let r2 = get(&fit, "mean_unit_r2").unwrap();
    assert!((0.0..=1.0).contains(&r2));
    let regime = run("activation_regime", ActivationKind::Relu, 400, 5, &z, &a, 33);
    for m in ["frac_active", "frac_always_on", "frac_always_off", "frac_switching", "pattern_entropy"] {
        let v = get(&regime, m).unwrap();
        assert!((0.0..=1.0).contains(&v), "{m} = {v}");
    }
    assert_eq!(get(&regime, "frac_switching"), Some(1.0));
    assert!(get(&regime, "pattern_entropy").unwrap() > 0.9);
}

#[test]
fn unit_linear_fit_is_invariant_to_rescaling_units() {
    let z = random(300 * 4, 5, 0.2);
    let a: Vec<f32> = z.iter().map(|v| v.tanh()).collect();
    let base = run("unit_linear_fit", ActivationKind::Tanh, 300, 4, &z, &a, 300);
    // Per-unit rescaling of z leaves every unit's fit, hence mean R², unchanged;
    // one common rescaling of a leaves the pooled ratio unchanged too.
    let zs: Vec<f32> = z.iter().enumerate().map(|(k, v)| v * (1.0 + k as f32 % 4.0)).collect();
    let as_: Vec<f32> = a.iter().map(|v| v * 7.0).collect();
    let scaled = run("unit_linear_fit", ActivationKind::Tanh, 300, 4, &zs, &as_, 300);
    for m in ["nonlinearity", "mean_unit_r2"] {
        let (x, y) = (get(&base, m).unwrap(), get(&scaled, m).unwrap());
        assert!((x - y).abs() < 1e-6, "{m}: {x} vs {y}");
    }
}

#[test]
fn a_tap_with_no_varying_unit_gives_null_not_nan() {
    let z = random(20 * 3, 6, -5.0);
    let fit = run("unit_linear_fit", ActivationKind::Relu, 20, 3, &z, &relu(&z), 20);
    assert_eq!(get(&fit, "nonlinearity"), None);
    assert_eq!(get(&fit, "mean_unit_r2"), None);
}

#[test]
fn performance_of_uniform_logits_is_log_k() {
    let v = run("performance", ActivationKind::Relu, 30, 1, &[0.0; 30], &[0.0; 30], 8);
    assert!((get(&v, "loss").unwrap() - 3f64.ln()).abs() < 1e-12);
    // argmax of equal logits is class 0; labels cycle 0,1,2.
    assert!((get(&v, "accuracy").unwrap() - 1.0 / 3.0).abs() < 1e-12);
}

#[test]
fn registry_names_are_unique_and_versioned() {
    let names: Vec<&str> = all_analyzers().iter().map(|a| a.name()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len());
    assert!(all_analyzers().iter().all(|a| a.version() >= 1 && !a.metrics().is_empty()));
    assert!(by_name("no_such_analyzer").is_none());
}

/// Random inputs: every metric is finite where it is defined and inside the
/// range docs/metrics.md states. `PROPTEST_CASES` raises the case count (the
/// bounded fuzz script does); CI runs the default.
mod random_inputs {
    use super::*;
    use analyzers::gram::{cka, effective_rank, Gram};
    use analyzers::info::{mu, mutual_information};
    use analyzers::stats::binary_entropy_bits;
    use proptest::prelude::*;

    fn cases(default: u32) -> ProptestConfig {
        let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
    }

    fn in_unit(v: &[MetricValue], names: &[&str]) -> Result<(), TestCaseError> {
        for m in v {
            if let Some(x) = m.value {
                prop_assert!(x.is_finite(), "{} = {x}", m.metric);
                if names.contains(&m.metric) {
                    prop_assert!((-1e-9..=1.0 + 1e-9).contains(&x), "{} = {x} outside [0, 1]", m.metric);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(cases(48))]

        #[test]
        fn unit_fit_and_regime_stay_in_range(
            n in 2usize..80, units in 1usize..5, seed in any::<u64>(), shift in -3f32..3.0,
            scale_exp in -3i32..4, chunk in 1usize..40, act in 0usize..4,
        ) {
            let scale = 10f32.powi(scale_exp);
            let z: Vec<f32> = random(n * units, seed, shift).iter().map(|v| v * scale).collect();
            let (kind, a): (ActivationKind, Vec<f32>) = match act {
                0 => (ActivationKind::Relu, relu(&z)),
                1 => (ActivationKind::LeakyRelu, z.iter().map(|&v| if v > 0.0 { v } else { 0.01 * v }).collect()),
                2 => (ActivationKind::Tanh, z.iter().map(|v| v.tanh()).collect()),
                _ => (ActivationKind::Identity, z.clone()),
            };
            let fit = run("unit_linear_fit", kind, n, units, &z, &a, chunk);
            in_unit(&fit, &["nonlinearity", "mean_unit_r2"])?;
            if act < 2 {
                let regime = run("activation_regime", kind, n, units, &z, &a, chunk);
                in_unit(&regime, &["frac_active", "frac_always_on", "frac_always_off", "frac_switching", "pattern_entropy"])?;
            }
        }

        #[test]
        fn cka_is_in_unit_interval_symmetric_and_one_on_itself(
            n in 3usize..40, f1 in 1usize..6, f2 in 1usize..6, s1 in any::<u64>(), s2 in any::<u64>(), shift in -2f32..2.0,
        ) {
            let x = Gram::from_rows(n, f1, &random(n * f1, s1, shift)).unwrap();
            let y = Gram::from_rows(n, f2, &random(n * f2, s2, 0.0)).unwrap();
            if let Some(v) = cka(&x, &y).unwrap() {
                prop_assert!((-1e-9..=1.0 + 1e-9).contains(&v), "cka {v}");
                let w = cka(&y, &x).unwrap().unwrap();
                prop_assert!((v - w).abs() < 1e-9);
            }
            if let Some(v) = cka(&x, &x).unwrap() {
                prop_assert!((v - 1.0).abs() < 1e-9, "cka(x, x) = {v}");
            }
            if let Some(r) = effective_rank(&x).unwrap() {
                prop_assert!(r >= 1.0 - 1e-9 && r <= f1.min(n - 1) as f64 + 1e-9, "effective rank {r} of {n}×{f1}");
            }
        }

        #[test]
        fn information_quantities_obey_their_identities(
            k in 2usize..6, draws in proptest::collection::vec((0usize..6, 0usize..6, 0usize..6), 1..120),
        ) {
            let (f, s, y): (Vec<usize>, Vec<usize>, Vec<usize>) =
                (draws.iter().map(|d| d.0 % k).collect(), draws.iter().map(|d| d.1 % k).collect(), draws.iter().map(|d| d.2 % k).collect());
            let r = mu(&f, &s, &y, k).unwrap();
            let log_k = (k as f64).log2();
            for (name, v) in [("I(F;Y)", r.i_f_y), ("I(F;S)", r.i_f_s), ("I(F;Y|S)", r.i_f_y_given_s), ("I(F;S|Y)", r.i_f_s_given_y)] {
                prop_assert!(v.is_finite() && v >= -1e-9 && v <= log_k + 1e-9, "{name} = {v}");
            }
            // Interaction information is symmetric: I(F;Y) − I(F;Y|S) = I(F;S) − I(F;S|Y).
            prop_assert!((r.mu - (r.i_f_s - r.i_f_s_given_y)).abs() < 1e-9);
            prop_assert!(r.mu <= r.i_f_y.min(r.i_f_s) + 1e-9);
            prop_assert!((0.0..=1.0).contains(&r.agreement) && (0.0..=1.0).contains(&r.surrogate_accuracy));
            // A surrogate equal to the network explains all it knows about Y.
            let same = mu(&f, &f, &y, k).unwrap();
            prop_assert!((same.mu - mutual_information(&f, &y, k)).abs() < 1e-9);
        }

        #[test]
        fn binary_entropy_is_in_unit_interval_and_symmetric(p in 0f64..=1.0) {
            let h = binary_entropy_bits(p);
            prop_assert!((0.0..=1.0 + 1e-12).contains(&h) && (h - binary_entropy_bits(1.0 - p)).abs() < 1e-12);
        }
    }
}
