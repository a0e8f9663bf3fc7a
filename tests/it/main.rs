//! lintrace's integration tests, one binary (`cargo test --test it`; one
//! group: `cargo test --test it robustness::`), grouped by what a user
//! cares about. One binary links candle, arrow and the rest once instead
//! of once per file.

mod common;

mod models;
mod metrics;
mod training;
mod analysis;
mod robustness;
mod sweeps;
mod docs;
