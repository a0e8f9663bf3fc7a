//! Properties docs/metrics.md states for CKA, the effective rank and μ.

use analyzers::gram::{cka, effective_rank, Gram};
use analyzers::info::mu;

fn lcg(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A random orthogonal f × f matrix (Gram–Schmidt on random columns).
fn orthogonal(f: usize, seed: u64) -> Vec<f64> {
    let r = lcg(seed, f * f);
    let mut q: Vec<Vec<f64>> = Vec::new();
    for c in 0..f {
        let mut v: Vec<f64> = (0..f).map(|i| r[i * f + c] as f64).collect();
        for u in &q {
            let d: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= d * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        q.push(v.into_iter().map(|a| a / norm).collect());
    }
    (0..f * f).map(|k| q[k % f][k / f]).collect()
}

fn rotate(x: &[f32], n: usize, f: usize, q: &[f64], scale: f64) -> Vec<f32> {
    let mut out = vec![0f32; n * f];
    for i in 0..n {
        for j in 0..f {
            out[i * f + j] = (scale * (0..f).map(|k| x[i * f + k] as f64 * q[k * f + j]).sum::<f64>()) as f32;
        }
    }
    out
}

#[test]
fn cka_is_one_on_itself_and_invariant_to_rotation_and_scale() {
    let (n, f) = (40, 12);
    let x = lcg(1, n * f);
    let gx = Gram::from_rows(n, f, &x).unwrap();
    assert!((cka(&gx, &gx).unwrap().unwrap() - 1.0).abs() < 1e-12);
    let y: Vec<f32> = x.iter().zip(lcg(2, n * f)).map(|(a, b)| a.max(0.0) + 0.3 * b).collect();
    let gy = Gram::from_rows(n, f, &y).unwrap();
    let base = cka(&gx, &gy).unwrap().unwrap();
    assert!(base > 0.0 && base < 1.0);
    let q = orthogonal(f, 3);
    let gr = Gram::from_rows(n, f, &rotate(&x, n, f, &q, 3.5)).unwrap();
    assert!((cka(&gr, &gy).unwrap().unwrap() - base).abs() < 1e-6, "rotation and scale change CKA");
    assert!((cka(&gr, &gx).unwrap().unwrap() - 1.0).abs() < 1e-6);
    // A constant representation has no defined CKA.
    let gc = Gram::from_rows(n, f, &vec![0.5; n * f]).unwrap();
    assert_eq!(cka(&gc, &gx).unwrap(), None);
}

#[test]
fn effective_rank_counts_equal_directions() {
    // Three orthogonal, equally scaled directions: rank exactly 3.
    let (n, f) = (60, 5);
    let mut x = vec![0f32; n * f];
    for i in 0..n {
        let sign = if (i / 3) % 2 == 0 { 1.0 } else { -1.0 };
        x[i * f + i % 3] = sign;
    }
    let r = effective_rank(&Gram::from_rows(n, f, &x).unwrap()).unwrap().unwrap();
    // Exactly 3 but for the eigensolver's rounding (~1e-15).
    assert!((r - 3.0).abs() < 1e-9, "{r}");
    assert_eq!(effective_rank(&Gram::from_rows(n, f, &vec![1.0; n * f]).unwrap()).unwrap(), None);
    // Unequal scales 1, 2, 4 along the three directions (each column has
    // 10 entries +s and 10 −s, so it is centred): singular values ∝ s, so
    // p = (1, 2, 4)/7 and the rank is exp(−Σ p ln p) ≈ 2.5, not the value
    // from the eigenvalues (p ∝ s²) or any other normalisation.
    let scaled: Vec<f32> = x.iter().enumerate().map(|(k, v)| v * [1.0, 2.0, 4.0, 0.0, 0.0][k % f]).collect();
    let r = effective_rank(&Gram::from_rows(n, f, &scaled).unwrap()).unwrap().unwrap();
    let want = (-[1.0f64, 2.0, 4.0].iter().map(|s| s / 7.0 * (s / 7.0).ln()).sum::<f64>()).exp();
    assert!((r - want).abs() < 1e-9, "{r} vs {want}");
}

#[test]
fn mu_of_a_perfect_surrogate_is_the_information_of_f() {
    let y: Vec<usize> = (0..300).map(|i| (i * 7 + i / 5) % 4).collect();
    let f: Vec<usize> = y.iter().enumerate().map(|(i, &v)| if i % 5 == 0 { (v + 1) % 4 } else { v }).collect();
    let r = mu(&f, &f, &y, 4).unwrap();
    assert!((r.mu - r.i_f_y).abs() < 1e-12);
    assert_eq!(r.agreement, 1.0);
    // A constant surrogate carries no information: μ = 0.
    let c = vec![2usize; 300];
    assert!(mu(&f, &c, &y, 4).unwrap().mu.abs() < 1e-12);
    assert!(mu(&[], &[], &[], 4).is_none());
}
