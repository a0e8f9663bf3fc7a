//! lintrace's integration tests, one binary (`cargo test --test it`; one
//! group: `cargo test --test it robustness::`), grouped by what a user
//! cares about. One binary links candle, arrow and the rest once instead
//! of once per file.

mod common;

mod analysis;
mod docs;
mod metrics;
mod models;
mod robustness;
mod sweeps;
mod training;
