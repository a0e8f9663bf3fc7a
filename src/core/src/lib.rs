//! lintrace's light core: what every part of lintrace reads or writes on
//! disk and that needs no model. The run folder's names (`layout`), atomic
//! writes (`atomic`, with the fault points the kill tests use), the tidy
//! Parquet tables and their schemas (`tables`), and the quiet exit on a
//! closed pipe. `lintrace` re-exports each module under its old path; the
//! query crate depends on this crate alone, not on candle.

pub mod atomic;
pub mod fault;
pub mod layout;
pub mod sigpipe;
pub mod tables;

/// lintrace's version, as every checkpoint and table row records it (one
/// version for the workspace's crates).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
