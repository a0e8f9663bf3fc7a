//! Choosing where models run.

use anyhow::{bail, Result};
use candle_core::Device;

/// `auto` picks the first CUDA GPU when lintrace was built with `--features
/// cuda` and one is present, else the CPU.
pub fn select(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        "cuda" => {
            if !candle_core::utils::cuda_is_available() {
                bail!("--device cuda: this lintrace was built without CUDA support (rebuild with `cargo build --release --features cuda`) or no GPU is visible");
            }
            Ok(Device::new_cuda(0)?)
        }
        other => bail!("unknown device '{other}' (expected auto, cpu or cuda)"),
    }
}
