//! The analysis of whole runs: end to end, incremental re-analysis, runs and checkpoints from elsewhere.

mod end_to_end;
mod interop;
mod reanalysis;
