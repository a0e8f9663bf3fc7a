//! The architectures, one file each: its spec fields, presets, checks,
//! layout (layers, taps, blocks, tensors, with their PyTorch or Hugging
//! Face names) and forward pass together, as nanoGPT keeps a model in one
//! file. They are written with `nn` and know nothing of the spec around
//! them (`spec::ModelSpec` lists them) or of files.
//!
//! - `mlp`: dense layers (`nn.Sequential` names).
//! - `cnn`: VGG-style stacks and torchvision's VGGs.
//! - `resnet`: CIFAR and torchvision ResNets.
//! - `transformer`: the pre-LayerNorm blocks `vit` (timm's names) and
//!   `gpt` (nanoGPT's) share.
//! - `hf`: Hugging Face decoder-only language models (GPT-NeoX, GPT-2,
//!   Llama, OLMo, OLMo-2), with their `config.json` fields.

pub mod cnn;
pub mod gpt;
pub mod hf;
pub mod mlp;
pub mod resnet;
pub mod transformer;
pub mod vit;

use crate::nn::{Frame, Layout, SizeGuard};

/// What the spec asks of every architecture's fields (`spec::Arch`
/// dispatches to it).
pub trait ArchSpec {
    /// The taps the fields describe (saturating: counted before validation).
    fn num_taps(&self) -> usize;

    /// The architecture's own rules. They bound its depth and widths, so
    /// that `layout`'s arithmetic cannot overflow.
    fn validate(&self, frame: &Frame) -> Result<(), String>;

    /// The sizes the fields ask for, checked before anything is allocated:
    /// by default those of the layout, which `validate` made safe to walk.
    fn check_sizes(&self, frame: &Frame, guard: &mut SizeGuard) -> Result<(), String> {
        guard.layout(&self.layout(frame))
    }

    /// Every layer, tap, block, attention layer and other tensor, in forward
    /// order and with their checkpoint names.
    fn layout(&self, frame: &Frame) -> Layout;
}
