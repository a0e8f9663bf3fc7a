//! Training: config, optimizers, schedules, checkpoint steps and the loop.

pub mod config;
pub mod optim;
pub mod schedule;
pub mod state;
pub mod steps;
mod trainer;

pub use config::TrainConfig;
pub use trainer::{init_model, loss, train, Diverged, TrainOptions};
