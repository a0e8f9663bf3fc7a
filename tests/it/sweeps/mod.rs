//! Sweeps: expansion, local execution, queries and figures, Slurm.

mod sweep;
mod slurm;
