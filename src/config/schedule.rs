//! Learning-rate schedules, as a function of the step about to be taken.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    Constant,
    /// Cosine decay from lr to 0 over the run.
    Cosine,
    /// Linear warm-up over `warmup_steps`, then constant.
    Warmup,
    /// Linear warm-up, then cosine decay to 0.
    WarmupCosine,
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(Self::Constant),
            "cosine" => Ok(Self::Cosine),
            "warmup" => Ok(Self::Warmup),
            "warmup-cosine" => Ok(Self::WarmupCosine),
            _ => bail!("unknown lr schedule '{s}' (expected constant, cosine, warmup or warmup-cosine)"),
        }
    }

    /// The learning rate for update number `step` (1-based) of `total`.
    pub fn lr(self, base: f64, step: u64, total: u64, warmup: u64) -> f64 {
        let warm = |s: u64| {
            if warmup > 0 && s <= warmup {
                s as f64 / warmup as f64
            } else {
                1.0
            }
        };
        let cosine = |s: u64, start: u64| {
            let span = total.saturating_sub(start).max(1) as f64;
            let t = (s.saturating_sub(start + 1)) as f64 / span;
            0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        };
        base * match self {
            Schedule::Constant => 1.0,
            Schedule::Cosine => cosine(step, 0),
            Schedule::Warmup => warm(step),
            Schedule::WarmupCosine if step <= warmup => warm(step),
            Schedule::WarmupCosine => cosine(step, warmup),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(Schedule::Constant.lr(0.1, 5, 10, 0), 0.1);
        assert_eq!(Schedule::Cosine.lr(1.0, 1, 10, 0), 1.0);
        assert!(Schedule::Cosine.lr(1.0, 10, 10, 0) < 0.05);
        assert_eq!(Schedule::Warmup.lr(1.0, 2, 10, 4), 0.5);
        assert_eq!(Schedule::Warmup.lr(1.0, 7, 10, 4), 1.0);
        assert_eq!(Schedule::WarmupCosine.lr(1.0, 5, 10, 4), 1.0);
    }
}
