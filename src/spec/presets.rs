//! Every named architecture lintrace builds, listed once: what
//! `lintrace-train --model NAME` trains and `lintrace-analyze --spec NAME`
//! reads checkpoints of, gathered from the lists in each architecture's
//! file (`arch/`), which builds them; `TrainConfig::model_spec` applies a
//! config's sizes to them.

use crate::arch;

/// The kind of network a preset names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `mlp`: dense layers with taps (`--width`, `--depth`).
    Mlp,
    /// `cnn`: a VGG-style stack (`--conv`, `--dense`).
    Cnn,
    /// CIFAR ResNets (He et al., 2016) and torchvision's.
    Resnet,
    /// torchvision's VGGs, plain and with BatchNorm.
    Vgg,
    /// timm's ViT layout.
    Vit,
    /// The one-layer modular-addition transformer (Nanda et al., 2023).
    ModAdd,
    /// nanoGPT's character-level GPT.
    CharGpt,
}

/// Every preset, in the order messages list them: the two free-form
/// families, then each architecture file's own list.
pub fn all() -> impl Iterator<Item = (&'static str, Family)> {
    [("mlp", Family::Mlp), ("cnn", Family::Cnn)]
        .into_iter()
        .chain(arch::resnet::PRESETS.iter().map(|n| (*n, Family::Resnet)))
        .chain(arch::cnn::PRESETS.iter().map(|n| (*n, Family::Vgg)))
        .chain(arch::vit::PRESETS.iter().map(|n| (*n, Family::Vit)))
        .chain(arch::gpt::CLASSIFIER_PRESETS.iter().map(|n| (*n, Family::ModAdd)))
        .chain(arch::gpt::LM_PRESETS.iter().map(|n| (*n, Family::CharGpt)))
}

/// The family of a preset name.
pub fn family(name: &str) -> Option<Family> {
    all().find(|(n, _)| *n == name).map(|(_, f)| f)
}

/// The presets of one family, in the list's order.
pub fn of(family: Family) -> Vec<&'static str> {
    all().filter(|(_, f)| *f == family).map(|(n, _)| n).collect()
}

/// Every preset name, comma-separated (for messages).
pub fn listed(keep: impl Fn(Family) -> bool) -> String {
    all().filter(|(_, f)| keep(*f)).map(|(n, _)| n).collect::<Vec<_>>().join(", ")
}

/// Whether `lintrace-analyze --spec NAME` builds the preset from
/// `--num-classes` and `--input`: all but modular addition, whose shape
/// its data fixes.
pub fn for_foreign_checkpoints(family: Family) -> bool {
    family != Family::ModAdd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_residual_and_vgg_preset_builds() {
        for name in of(Family::Resnet).into_iter().chain(of(Family::Vgg)) {
            assert!(super::super::Arch::preset(name).is_some(), "{name}");
        }
        assert!(super::super::Arch::preset("resnet99").is_none());
        for name in of(Family::Vit) {
            assert!(crate::arch::vit::VitSpec::preset(name).is_some(), "{name}");
        }
        for name in of(Family::ModAdd).into_iter().chain(of(Family::CharGpt)) {
            assert!(crate::arch::gpt::GptSpec::preset(name, 65).is_some(), "{name}");
        }
        let names: std::collections::BTreeSet<&str> = all().map(|(n, _)| n).collect();
        assert_eq!(names.len(), all().count(), "a preset is listed twice");
    }
}
