//! Which optimizer a run uses (the update rules are `train/optim.rs`).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Momentum,
    Adam,
    Adamw,
}

impl OptimizerKind {
    const ALL: [Self; 4] = [Self::Sgd, Self::Momentum, Self::Adam, Self::Adamw];

    pub fn parse(s: &str) -> Result<Self> {
        match Self::ALL.into_iter().find(|k| k.name() == s) {
            Some(k) => Ok(k),
            None => bail!("unknown optimizer '{s}' (expected sgd, momentum, adam or adamw)"),
        }
    }

    /// The name `parse` reads (and serde writes).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sgd => "sgd",
            Self::Momentum => "momentum",
            Self::Adam => "adam",
            Self::Adamw => "adamw",
        }
    }
}
