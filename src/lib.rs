//! lintrace: how neural networks become nonlinear over depth and training.
//!
//! The data path is one-way: `data` → `train` (writes `checkpoint`s, the
//! `probe` and the run manifest) → `analysis` (reloads checkpoints, runs the
//! `analyzers` crate's metrics) → `tables` (tidy Parquet). Queries, figures
//! and the report over those tables are the `lintrace-query` crate
//! (src/query), which the training and analysis binaries do not build.

pub mod activations;
pub mod analysis;
pub mod arch;
pub mod batches;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod hf;
pub mod init;
pub mod interop;
pub mod lock;
pub mod model;
pub mod nn;
pub mod probe;
pub mod run;
pub mod spec;
pub mod surrogate;
pub mod sweep;
pub mod train;

pub use analyzers;
// The light core, under the paths the rest of lintrace has always used.
pub use lintrace_core::{atomic, fault, layout, sigpipe, tables};

/// lintrace's version, as every checkpoint and table row records it.
pub use lintrace_core::VERSION;
