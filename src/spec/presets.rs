//! Every named architecture lintrace builds, listed once: what
//! `lintrace-train --model NAME` trains and `lintrace-analyze --spec NAME`
//! reads checkpoints of. Each architecture's file in `arch/` builds its own
//! presets (`PRESETS` there); `TrainConfig::model_spec` applies a config's
//! sizes to them.

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

pub const PRESETS: &[(&str, Family)] = &[
    ("mlp", Family::Mlp),
    ("cnn", Family::Cnn),
    ("resnet20", Family::Resnet),
    ("resnet32", Family::Resnet),
    ("resnet56", Family::Resnet),
    ("resnet18", Family::Resnet),
    ("resnet34", Family::Resnet),
    ("resnet50", Family::Resnet),
    ("vgg11", Family::Vgg),
    ("vgg11_bn", Family::Vgg),
    ("vgg13", Family::Vgg),
    ("vgg13_bn", Family::Vgg),
    ("vgg16", Family::Vgg),
    ("vgg16_bn", Family::Vgg),
    ("vit-tiny", Family::Vit),
    ("vit-mini", Family::Vit),
    ("modadd", Family::ModAdd),
    ("gpt-char-small", Family::CharGpt),
    ("gpt-char-tiny", Family::CharGpt),
];

/// The family of a preset name.
pub fn family(name: &str) -> Option<Family> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The presets of one family, in the list's order.
pub fn of(family: Family) -> Vec<&'static str> {
    PRESETS.iter().filter(|(_, f)| *f == family).map(|(n, _)| *n).collect()
}

/// Every preset name, comma-separated (for messages).
pub fn listed(keep: impl Fn(Family) -> bool) -> String {
    PRESETS.iter().filter(|(_, f)| keep(*f)).map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
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
        let names: std::collections::BTreeSet<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), PRESETS.len(), "a preset is listed twice");
    }
}
