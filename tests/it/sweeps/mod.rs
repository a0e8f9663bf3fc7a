//! Sweeps: expansion, local execution, queries and figures, Slurm.

mod slurm;
mod sweep;
