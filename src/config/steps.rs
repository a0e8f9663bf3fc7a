//! Which steps get a checkpoint: step 0, log-spaced steps, the final step,
//! and optionally every N steps.

/// How densely log-spaced checkpoints are placed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Spacing {
    /// `k` points per factor of 10: round(10^(i/k)).
    PerDecade(f64),
    /// `k` points per factor of 2: round(2^(i/k)); 2 gives 1, 2, 3, 4, 6, 8, 11, 16, …
    PerOctave(f64),
}

/// Sorted, deduplicated checkpoint steps in `0..=total`.
pub fn checkpoint_steps(total: u64, spacing: Spacing, every: u64) -> Vec<u64> {
    let (base, k): (f64, f64) = match spacing {
        Spacing::PerDecade(k) => (10.0, k),
        Spacing::PerOctave(k) => (2.0, k),
    };
    let mut steps = vec![0, total];
    if k > 0.0 && k.is_finite() {
        for i in 0.. {
            let s = base.powf(i as f64 / k).round() as u64;
            if s > total {
                break;
            }
            steps.push(s);
        }
    }
    if every > 0 {
        steps.extend((every..=total).step_by(every as usize));
    }
    steps.sort_unstable();
    steps.dedup();
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_octave_two_gives_the_documented_list() {
        assert_eq!(checkpoint_steps(16, Spacing::PerOctave(2.0), 0), vec![0, 1, 2, 3, 4, 6, 8, 11, 16]);
    }

    #[test]
    fn per_decade_eight() {
        // round(10^(i/8)) for i = 0..16: 1 1 2 2 3 4 6 7 10 13 18 24 32 42 56 75 100
        assert_eq!(checkpoint_steps(100, Spacing::PerDecade(8.0), 0), vec![0, 1, 2, 3, 4, 6, 7, 10, 13, 18, 24, 32, 42, 56, 75, 100]);
    }

    #[test]
    fn final_step_and_every_n_are_added() {
        assert_eq!(checkpoint_steps(25, Spacing::PerDecade(1.0), 10), vec![0, 1, 10, 20, 25]);
        assert_eq!(checkpoint_steps(0, Spacing::PerDecade(8.0), 0), vec![0]);
    }
}
