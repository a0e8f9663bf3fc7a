//! Choosing where models run.

use anyhow::{bail, Result};
use candle_core::Device;

/// `auto` picks the first CUDA GPU when lintrace was built with `--features
/// cuda` and one is present, else the CPU.
pub fn select(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(untracked(Device::cuda_if_available(0).unwrap_or(Device::Cpu))),
        "cuda" => {
            if !candle_core::utils::cuda_is_available() {
                bail!("--device cuda: this lintrace was built without CUDA support (rebuild with `cargo build --release --features cuda`) or no GPU is visible");
            }
            let dev = Device::new_cuda(0).map_err(|e| anyhow::anyhow!("--device cuda: could not open GPU 0 ({e})"))?;
            Ok(untracked(dev))
        }
        other => bail!("unknown device '{other}' (expected auto, cpu or cuda)"),
    }
}

/// Turns off cudarc's per-allocation event tracking on a CUDA device.
///
/// cudarc creates two CUDA events for every buffer it allocates (and
/// destroys them on drop) so that buffers shared between streams can be
/// synchronised; it only records them once a second stream exists. candle
/// runs every op of a device on one stream and lintrace creates no other,
/// so the events are never used: this saves four driver calls per tensor
/// a training step allocates. Buffers allocated before this call keep
/// their events, which is harmless.
fn untracked(dev: Device) -> Device {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = &dev {
        // SAFETY: one stream per device (see above), so there is nothing
        // for the events to synchronise.
        unsafe { d.disable_event_tracking() };
    }
    dev
}
