//! The trainer's configuration: defaults, overlaid by a TOML file, overlaid
//! by command-line flags. The resolved config is written to `run.json` and
//! flattened into the `runs` table, so every key here is a column there.
//!
//! It sits below training, with the schedules and the optimizer's name it
//! refers to: the run manifest, sweeps and the analysis of presets read a
//! config without depending on the trainer.

mod optimizer;
pub mod schedule;
pub mod steps;

pub use optimizer::OptimizerKind;

use crate::data::DataConfig;
use crate::init::InitScheme;
use crate::spec::{
    presets, Activation, Arch, CnnSpec, ConvItem, GptSpec, MlpSpec, ModelSpec, ResnetSpec, Shortcut, Stem, VitSpec, SPEC_VERSION,
};

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}
use anyhow::{bail, Context, Result};
use schedule::Schedule;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use steps::Spacing;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// mlp | cnn
    pub model: String,
    pub activation: String,
    pub leaky_relu_slope: f64,
    /// MLP: hidden width and number of hidden layers.
    pub width: usize,
    pub depth: usize,
    /// CNN: conv stack (channels or "M" for a 2×2 max-pool), kernel, dense widths.
    pub conv: Vec<ConvItem>,
    pub kernel_size: usize,
    pub dense: Vec<usize>,
    /// CNN: a BatchNorm after every conv (VGG-BN). Left out of the config's
    /// JSON when false, so existing run ids do not change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch_norm: bool,
    /// ResNet presets: the stem (`small`: 3×3 conv, no max-pool, for 32×32
    /// inputs; `imagenet`: torchvision's 7×7/2 + max-pool) and the shortcut
    /// where shapes change (`a`: zero padding; `b`: 1×1 projection). Unset:
    /// the preset's own (CIFAR ResNets: small, a; torchvision's: imagenet, b).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stem: Option<Stem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortcut: Option<Shortcut>,
    /// Transformers (`vit-tiny`, `vit-mini`, `modadd`): model width, blocks,
    /// heads, MLP hidden width and (ViT) patch side; unset: the preset's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_hidden: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<usize>,
    /// Transformers: dropout on embeddings, attention weights and sublayer
    /// outputs (0: none, the default).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropout: f64,
    /// Taps whose nonlinearity is the identity (partly linear models).
    pub linear_taps: Vec<usize>,
    #[serde(flatten)]
    pub data: DataConfig,
    /// Optimizer updates; 0 means "use epochs".
    pub steps: u64,
    /// Used when steps is 0: steps = ceil(epochs · n_train / batch_size).
    pub epochs: f64,
    pub batch_size: usize,
    pub lr: f64,
    pub optimizer: OptimizerKind,
    pub momentum: f64,
    pub weight_decay: f64,
    pub lr_schedule: Schedule,
    pub warmup_steps: u64,
    /// Adam/AdamW β₁ and β₂ (PyTorch's 0.9 and 0.999 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adam_beta1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adam_beta2: Option<f64>,
    /// Clip the global gradient norm to this (0: off, the default).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub grad_clip: f64,
    /// Label smoothing ε of the training loss, as
    /// `torch.nn.CrossEntropyLoss(label_smoothing=ε)` (0: off).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    pub init: InitScheme,
    pub init_scale: f64,
    /// Random crops (padding H/8) and horizontal flips, for image data.
    pub augment: bool,
    /// On a CUDA GPU, f32 matrix products (and so convolutions) of training
    /// use TF32 tensor cores (cuBLAS `COMPUTE_32F_FAST_TF32`), as PyTorch's
    /// cuDNN convolutions do by default. Analysis never does. Left out of
    /// the config's JSON when false, so existing run ids do not change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tf32: bool,
    pub seed: u64,
    pub probe_size: usize,
    /// Seed of the probe draw (shared by the runs of a sweep).
    pub probe_seed: u64,
    pub ckpt_per_decade: f64,
    /// If > 0, overrides ckpt_per_decade: points per doubling of the step.
    pub ckpt_per_octave: f64,
    /// Also checkpoint every N steps (0 = off).
    pub ckpt_every: u64,
    /// What the network is trained to predict: `labels`, or
    /// `teacher:PATH` (a checkpoint file or run folder: its final checkpoint's
    /// argmax predictions on the training split replace the labels).
    pub targets: String,
    /// Runs root.
    pub out: PathBuf,
    /// Run id; empty = a readable name plus a short config hash.
    pub name: String,
}

/// SGD momentum when none is given (PyTorch's usual 0.9).
const DEFAULT_MOMENTUM: f64 = 0.9;

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: "cnn".into(),
            activation: "relu".into(),
            leaky_relu_slope: 0.01,
            width: 128,
            depth: 4,
            conv: vec![
                ConvItem::Conv(32),
                ConvItem::Conv(64),
                ConvItem::Pool(crate::spec::PoolMarker::M),
                ConvItem::Conv(64),
                ConvItem::Pool(crate::spec::PoolMarker::M),
            ],
            kernel_size: 3,
            batch_norm: false,
            stem: None,
            shortcut: None,
            dense: vec![128],
            dim: None,
            blocks: None,
            heads: None,
            mlp_hidden: None,
            patch: None,
            dropout: 0.0,
            linear_taps: Vec::new(),
            data: DataConfig::default(),
            steps: 0,
            epochs: 10.0,
            batch_size: 128,
            lr: 0.05,
            optimizer: OptimizerKind::Momentum,
            momentum: DEFAULT_MOMENTUM,
            weight_decay: 0.0,
            lr_schedule: Schedule::Constant,
            warmup_steps: 0,
            adam_beta1: None,
            adam_beta2: None,
            grad_clip: 0.0,
            label_smoothing: 0.0,
            init: InitScheme::Pytorch,
            init_scale: 1.0,
            augment: false,
            tf32: false,
            seed: 0,
            probe_size: 2048,
            probe_seed: 0,
            ckpt_per_decade: 8.0,
            ckpt_per_octave: 0.0,
            ckpt_every: 0,
            targets: "labels".into(),
            out: PathBuf::from("runs"),
            name: String::new(),
        }
    }
}

impl TrainConfig {
    /// The keys of a TOML config file, checked as a config on their own
    /// (unknown keys and bad values are errors naming the file), for
    /// overlaying with more keys (`lintrace-train`'s flags).
    pub fn table_from_file(path: &Path) -> Result<toml::Table> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read config", path.display()))?;
        let table = parse_toml(&text).with_context(|| format!("{}", path.display()))?;
        Self::from_table(table.clone()).with_context(|| format!("{}", path.display()))?;
        Ok(table)
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let table: toml::Table = parse_toml(text)?;
        Self::from_table(table)
    }

    /// Defaults overlaid with the keys of a TOML table; unknown keys are an error.
    pub fn from_table(table: toml::Table) -> Result<Self> {
        let known = Self::keys();
        if let Some(bad) = table.keys().find(|k| !known.contains(k.as_str())) {
            bail!("unknown config key '{bad}'");
        }
        let momentum_given = table.contains_key("momentum");
        // toml puts the key on a line of its own: one line per error.
        let cfg: TrainConfig = table.try_into().map_err(|e: toml::de::Error| {
            anyhow::anyhow!("invalid config value: {}", e.to_string().split_whitespace().collect::<Vec<_>>().join(" "))
        })?;
        if momentum_given {
            cfg.check_momentum_applies()?;
        }
        Ok(cfg)
    }

    /// `momentum` was given: refuse it unless the optimizer uses it, since
    /// plain `sgd` (unlike PyTorch's SGD) and Adam would silently ignore it.
    pub fn check_momentum_applies(&self) -> Result<()> {
        if self.optimizer != OptimizerKind::Momentum {
            bail!(
                "momentum applies to optimizer \"momentum\" (SGD with momentum) only; optimizer \"{}\" would ignore it",
                self.optimizer.name()
            );
        }
        Ok(())
    }

    /// Every key a config may hold: the keys of a config in which every
    /// optional key is set (serialising leaves unset ones out, so a
    /// default config alone would not name them). A new key that is
    /// skipped when unset must be set here (and listed in
    /// `tests::every_field_is_a_key`).
    pub fn keys() -> BTreeSet<String> {
        Self::example().keys().cloned().collect()
    }

    /// A config with every key set, as JSON: its keys are every key a
    /// config may hold and its values show each key's type (what
    /// `lintrace-train` reads a flag's text as).
    pub fn example() -> serde_json::Map<String, serde_json::Value> {
        let mut all = TrainConfig {
            batch_norm: true,
            stem: Some(Stem::Small),
            shortcut: Some(Shortcut::A),
            dim: Some(1),
            blocks: Some(1),
            heads: Some(1),
            mlp_hidden: Some(1),
            patch: Some(1),
            dropout: 0.1,
            adam_beta1: Some(0.9),
            adam_beta2: Some(0.999),
            grad_clip: 1.0,
            label_smoothing: 0.1,
            tf32: true,
            ..TrainConfig::default()
        };
        all.data.modulus = Some(1);
        all.data.train_fraction = Some(0.5);
        all.data.context = Some(1);
        all.data.data_dir = Some(PathBuf::from("data"));
        all.data.cache_dir = Some(PathBuf::from("cache"));
        all.data.classes = Some(vec![0, 1]);
        all.data.groups = Some("0-4/5-9".into());
        match serde_json::to_value(all) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        }
    }

    /// The first key in which two configs differ, ignoring `out` (where
    /// the runs live may be spelt differently: relative, another mount).
    pub fn first_difference(&self, other: &TrainConfig) -> Option<String> {
        let json = |c: &TrainConfig| serde_json::to_value(TrainConfig { out: PathBuf::new(), ..c.clone() }).ok();
        match (json(self)?, json(other)?) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                a.iter().find(|(k, v)| b.get(*k) != Some(v)).map(|(k, _)| k.clone())
            }
            _ => None,
        }
    }

    pub fn spacing(&self) -> Spacing {
        if self.ckpt_per_octave > 0.0 {
            Spacing::PerOctave(self.ckpt_per_octave)
        } else {
            Spacing::PerDecade(self.ckpt_per_decade)
        }
    }

    /// The model spec for data of `input_shape` with `num_classes` classes
    /// (and, for token data, a vocabulary of `vocab`): the preset `model`
    /// names (each architecture's file lists its own, `arch/`), with the
    /// sizes this config overrides.
    pub fn model_spec(&self, input_shape: &[usize], num_classes: usize, vocab: Option<usize>) -> Result<ModelSpec> {
        let transformer = self.transformer_arch(vocab)?;
        if transformer.is_none()
            && (self.dim.is_some() || self.blocks.is_some() || self.heads.is_some() || self.mlp_hidden.is_some() || self.patch.is_some())
        {
            bail!("dim, blocks, heads, mlp_hidden and patch apply to transformers only (model '{}')", self.model);
        }
        if transformer.is_none() && self.dropout != 0.0 {
            bail!("dropout applies to transformers only (model '{}'; the VGG presets have their own)", self.model);
        }
        if vocab.is_some() && !matches!(transformer, Some(Arch::Gpt(_))) {
            bail!("token data (dataset '{}') needs a token model (modadd, gpt-char-*), not '{}'", self.data.dataset, self.model);
        }
        let arch = match (transformer, self.model.as_str()) {
            (Some(arch), _) => arch,
            (None, "mlp") => Arch::Mlp(MlpSpec::preset(self.width, self.depth)),
            (None, "cnn") => Arch::Cnn(CnnSpec {
                conv: self.conv.clone(),
                kernel_size: self.kernel_size,
                dense: self.dense.clone(),
                batch_norm: self.batch_norm,
                adaptive_pool: None,
                dropout: None,
            }),
            (None, name) => match Arch::preset(name) {
                Some(vgg @ Arch::Cnn(_)) if !self.batch_norm => vgg,
                Some(Arch::Cnn(_)) => bail!("--batch-norm with a VGG preset: use {name}_bn"),
                Some(Arch::Resnet(r)) => {
                    Arch::Resnet(ResnetSpec { stem: self.stem.unwrap_or(r.stem), shortcut: self.shortcut.unwrap_or(r.shortcut), ..r })
                }
                _ => {
                    bail!("unknown model '{name}' (expected one of {})", presets::listed(|_| true))
                }
            },
        };
        if !matches!(arch, Arch::Resnet(_)) && (self.stem.is_some() || self.shortcut.is_some()) {
            bail!("stem and shortcut apply to ResNets only (model '{}')", self.model);
        }
        if matches!(arch, Arch::Resnet(_)) && self.batch_norm {
            // (VGG presets were checked above.)
            bail!("batch_norm is for the plain CNN: a ResNet always has BatchNorm");
        }
        let spec = ModelSpec {
            spec_version: SPEC_VERSION,
            arch,
            input_shape: input_shape.to_vec(),
            num_classes,
            activation: Activation::parse(&self.activation).map_err(anyhow::Error::msg)?,
            tap_activations: None,
            leaky_relu_slope: self.leaky_relu_slope,
            linear_taps: self.linear_taps.iter().copied().collect(),
        };
        spec.validate().map_err(anyhow::Error::msg)?;
        Ok(spec)
    }

    /// The transformer presets (`arch/vit.rs`, `arch/gpt.rs`), with any
    /// size the config overrides; `None` for other models. `modadd` takes
    /// its vocabulary (p + 1) from its data, `gpt-char-*` theirs from
    /// `--dataset text`.
    fn transformer_arch(&self, vocab: Option<usize>) -> Result<Option<Arch>> {
        let dropout = (self.dropout != 0.0).then_some(self.dropout);
        let pick = |v: Option<usize>, d: usize| v.unwrap_or(d);
        if let Some(v) = VitSpec::preset(&self.model) {
            return Ok(Some(Arch::Vit(VitSpec {
                patch: pick(self.patch, v.patch),
                dim: pick(self.dim, v.dim),
                depth: pick(self.blocks, v.depth),
                heads: pick(self.heads, v.heads),
                mlp_hidden: pick(self.mlp_hidden, v.mlp_hidden),
                dropout,
            })));
        }
        let name = self.model.as_str();
        let family = presets::family(name);
        if !matches!(family, Some(presets::Family::ModAdd | presets::Family::CharGpt)) {
            return Ok(None);
        }
        if self.patch.is_some() {
            bail!("patch applies to ViTs only");
        }
        let vocab = match family {
            Some(presets::Family::ModAdd) => {
                vocab.ok_or_else(|| anyhow::anyhow!("model '{name}' needs token data (--dataset modular-addition)"))?
            }
            _ => vocab
                .filter(|_| self.data.dataset == "text")
                .ok_or_else(|| anyhow::anyhow!("model '{name}' is a language model: it needs --dataset text"))?,
        };
        let g = GptSpec::preset(name, vocab).context(format!("model '{name}': a GPT preset arch/gpt.rs does not build"))?;
        Ok(Some(Arch::Gpt(GptSpec {
            dim: pick(self.dim, g.dim),
            depth: pick(self.blocks, g.depth),
            heads: pick(self.heads, g.heads),
            mlp_hidden: pick(self.mlp_hidden, g.mlp_hidden),
            dropout,
            ..g
        })))
    }

    /// The config with the defaults that depend on other keys filled in
    /// (the text dataset's context), as the trainer runs and records it.
    pub fn resolved(&self) -> TrainConfig {
        let mut c = self.clone();
        if c.data.dataset == "text" && c.data.context.is_none() {
            c.data.context = Some(c.default_context());
        }
        c
    }

    /// The window length of `--dataset text` when the config leaves it
    /// unset: the preset's context (`arch/gpt.rs`), otherwise nanoGPT's 256.
    pub fn default_context(&self) -> usize {
        GptSpec::preset_context(&self.model).unwrap_or(crate::data::DEFAULT_CONTEXT)
    }

    /// The run id: `name` if given, else `<model>-<dataset>-<activation>-s<seed>-<hash>`
    /// where the hash covers every key but `out` and `name`.
    pub fn run_id(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        let mut c = self.resolved();
        c.out = PathBuf::new();
        let digest = Sha256::digest(serde_json::to_string(&c).unwrap_or_default().as_bytes());
        let hash: String = digest.iter().take(3).map(|b| format!("{b:02x}")).collect();
        format!("{}-{}-{}-s{}-{hash}", self.model, self.data.dataset, self.activation, self.seed)
    }

    pub fn check(&self) -> Result<()> {
        if self.batch_size == 0 {
            bail!("batch_size must be positive");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("lr must be a positive number, got {}", self.lr);
        }
        if self.steps == 0 && !(self.epochs > 0.0) {
            bail!("give steps > 0 or epochs > 0");
        }
        if self.targets != "labels" && !self.targets.starts_with("teacher:") {
            bail!("targets must be 'labels' or 'teacher:CHECKPOINT_OR_RUN', got '{}'", self.targets);
        }
        if self.probe_size == 0 {
            bail!("probe_size must be positive");
        }
        if !(self.grad_clip >= 0.0 && self.grad_clip.is_finite()) {
            bail!("grad_clip must be a non-negative number, got {}", self.grad_clip);
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!("label_smoothing must be in [0, 1), got {}", self.label_smoothing);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout must be in [0, 1), got {}", self.dropout);
        }
        for (name, b) in [("adam_beta1", self.adam_beta1), ("adam_beta2", self.adam_beta2)] {
            if matches!(b, Some(b) if !(0.0..1.0).contains(&b)) {
                bail!("{name} must be in [0, 1)");
            }
            if b.is_some() && !matches!(self.optimizer, OptimizerKind::Adam | OptimizerKind::Adamw) {
                bail!("{name} applies to optimizers \"adam\" and \"adamw\" only; optimizer \"{}\" would ignore it", self.optimizer.name());
            }
        }
        if self.momentum != DEFAULT_MOMENTUM {
            self.check_momentum_applies()?;
        }
        if !self.name.is_empty() && (self.name.contains('/') || self.name.starts_with('.')) {
            bail!("run name '{}' must be a plain folder name", self.name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of a config can be given in a config file (and a sweep):
    /// each one, alone in a file, is accepted and changes the config.
    #[test]
    fn every_field_is_a_key() {
        let keys = TrainConfig::keys();
        let optional = "adam_beta1 adam_beta2 grad_clip label_smoothing dropout context modulus train_fraction tf32 batch_norm stem shortcut dim blocks heads mlp_hidden patch";
        for k in optional.split(' ').chain(["lr", "dataset"]) {
            assert!(keys.contains(k), "{k} is not a config key");
        }
        let c = TrainConfig::from_toml("adam_beta2 = 0.99\ngrad_clip = 1.0\ncontext = 32\ndropout = 0.1\n").unwrap();
        assert_eq!((c.adam_beta2, c.grad_clip, c.data.context, c.dropout), (Some(0.99), 1.0, Some(32), 0.1));
        // The keys of a serialised config are always among them.
        let json = serde_json::to_value(TrainConfig::default()).unwrap();
        for k in json.as_object().unwrap().keys() {
            assert!(keys.contains(k));
        }
    }

    #[test]
    fn toml_overlays_defaults_and_rejects_unknown_keys() {
        let c = TrainConfig::from_toml("lr = 0.1\ndataset = \"sinusoid-2d\"\nmodel = \"mlp\"\nconv = [16, \"M\"]\n").unwrap();
        assert_eq!(c.lr, 0.1);
        assert_eq!(c.data.dataset, "sinusoid-2d");
        assert_eq!(c.conv, vec![ConvItem::Conv(16), ConvItem::Pool(crate::spec::PoolMarker::M)]);
        assert_eq!(c.batch_size, 128);
        let e = TrainConfig::from_toml("lrr = 0.1").unwrap_err();
        assert!(format!("{e:#}").contains("unknown config key 'lrr'"));
    }

    #[test]
    fn optimizer_settings_that_the_optimizer_would_ignore_are_refused() {
        let err = |t: &str| format!("{:#}", TrainConfig::from_toml(t).and_then(|c| c.check().map(|_| c)).unwrap_err());
        assert!(err("optimizer = \"sgd\"\nmomentum = 0.9\n").contains("momentum applies to optimizer \"momentum\""));
        assert!(err("optimizer = \"adam\"\nmomentum = 0.5\n").contains("optimizer \"adam\" would ignore it"));
        assert!(err("optimizer = \"momentum\"\nadam_beta2 = 0.99\n").contains("adam_beta2 applies to optimizers"));
        let c = TrainConfig::from_toml("optimizer = \"momentum\"\nmomentum = 0.8\n").unwrap();
        assert_eq!(c.momentum, 0.8);
        c.check().unwrap();
        TrainConfig::from_toml("optimizer = \"adamw\"\nadam_beta2 = 0.99\n").unwrap().check().unwrap();
        // A changed momentum that reaches the config another way (e.g. an
        // optimizer overridden after it was read) is refused by check().
        let mut c = TrainConfig { momentum: 0.5, ..TrainConfig::default() };
        c.optimizer = OptimizerKind::Sgd;
        assert!(format!("{:#}", c.check().unwrap_err()).contains("would ignore it"));
    }

    #[test]
    fn run_id_is_readable_and_config_sensitive() {
        let a = TrainConfig::default();
        let mut b = a.clone();
        b.lr = 0.01;
        assert!(a.run_id().starts_with("cnn-digits-relu-s0-"));
        assert_ne!(a.run_id(), b.run_id());
        let mut c = a.clone();
        c.out = "elsewhere".into();
        assert_eq!(a.run_id(), c.run_id());
    }
}

/// Parses TOML, with toml's multi-line error (a source excerpt with a
/// caret) folded into one line: "malformed TOML at line L, column C: why".
pub fn parse_toml(text: &str) -> anyhow::Result<toml::Table> {
    toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| {
            let before = &text[..s.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" at line {line}, column {col}")
        });
        anyhow::anyhow!("malformed TOML{}: {}", at.unwrap_or_default(), e.message().trim().replace('\n', "; "))
    })
}
