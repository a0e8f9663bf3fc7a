//! What every architecture is written with: the description of layers and
//! taps (`desc`), one forward pass's recording and resuming (`pass`), the
//! layers and activations (`layers`) and the kernels behind one door
//! (`ops`). Nothing here knows a particular architecture; `arch/` holds
//! those, one file each.

pub mod desc;
mod layers;
pub mod ops;
mod pass;
mod weights;

pub use desc::{
    conv_out, dense, is_buffer, stream_map, token_dense, Activation, AttentionDesc, ExtraInit, ExtraTensor, Frame, LayerDesc, Layout,
    ResidualBlockDesc, SizeGuard, TapDesc, MAX_ELEMENTS,
};
pub use layers::{activate, batch_norm, dropout, Conv2d, Dense};
pub use pass::{block, current, Affine, Recorded, Start, TapValues, Taps};
pub use weights::Weights;
