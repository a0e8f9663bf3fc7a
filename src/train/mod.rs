//! Training: the optimizers, the training state and the loop.

pub mod optim;
pub mod state;
mod trainer;

// The configuration lives below training (crate::config); these paths stay.
pub use crate::config::{self, schedule, steps, TrainConfig};
pub use trainer::{init_model, loss, train, Diverged, TrainOptions};
