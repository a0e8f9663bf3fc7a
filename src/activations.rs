//! Activations captured outside lintrace: the files that the Python package
//! (`python/lintrace/activations.py`) writes when it pushes a run's probe
//! through each checkpoint of a PyTorch model that lintrace does not
//! rebuild, with hooks on the modules the user names. The format is
//! lintrace's own and versioned; docs/pytorch.md describes it, and this
//! module is its one reader.
//!
//! One file per checkpoint, `RUN_DIR/activations/step_XXXXXXXX.safetensors`:
//! - metadata `format` = `lintrace.activations`, `format_version` = `1`,
//!   `run_id`, `step`, `probe_hash`, `n` (probe samples), and `layout`, the
//!   JSON [`Layout`] of the taps;
//! - `logits` `[n · predictions per sample, classes]`;
//! - per tap `i`: `taps.i.z` and `taps.i.a` `[n, *shape]` (f32, f16 or bf16),
//!   and, when its affine layer is known, `taps.i.input` `[n, *input shape]`
//!   (optional: only `block_linear_fit` reads it) and `taps.i.weight`
//!   `[out, fan_in]`;
//! - per attention layer `j`: `attention.j` `[n, heads, queries, keys]`.

use crate::checkpoint;
use analyzers::{ActivationKind, AttentionInfo, BlockGeometry, LayerKind, LayerWeights, ModelInfo, TapInfo};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "lintrace.activations";
pub const FORMAT_VERSION: &str = "1";
/// The folder of a run that holds them.
pub const DIR: &str = "activations";

fn one() -> usize {
    1
}

/// What was captured: the taps in forward order, the attention layers, and
/// what the logits are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub taps: Vec<TapLayout>,
    #[serde(default)]
    pub attention: Vec<AttentionLayout>,
    pub num_classes: usize,
    /// 1, or a sequence model's one prediction per position.
    #[serde(default = "one")]
    pub predictions_per_sample: usize,
    #[serde(default)]
    pub n_parameters: Option<u64>,
    /// The model's class name, for the reader.
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TapLayout {
    /// The user's name for the tap (usually the activation module's path).
    pub name: String,
    /// `relu`, `leaky_relu`, `gelu`, `gelu_tanh`, `silu`, `tanh`,
    /// `identity`, or any other name (an elementwise map lintrace has no
    /// name for: `sigmoid`, `hardswish`, …).
    pub activation: String,
    /// The PyTorch module class, for the reader.
    #[serde(default)]
    pub module: Option<String>,
    /// Per-sample shape of z and a.
    pub shape: Vec<usize>,
    /// The affine layer feeding the tap, when known.
    #[serde(default)]
    pub layer: Option<LayerLayout>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerLayout {
    /// `nn.Linear`; `positions` when it maps every position of a sequence.
    Dense {
        name: String,
        in_features: usize,
        out_features: usize,
        #[serde(default)]
        positions: Option<usize>,
    },
    /// `nn.Conv2d` with a square kernel, one stride and one padding. A
    /// grouped (depthwise) convolution is fitted by `block_linear_fit` as a
    /// full one, of which it is a special case.
    Conv2d {
        name: String,
        in_channels: usize,
        height: usize,
        width: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        #[serde(default = "one")]
        groups: usize,
        out_channels: usize,
        out_height: usize,
        out_width: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionLayout {
    pub name: String,
    pub heads: usize,
    pub positions: usize,
    pub causal: bool,
    /// The tap whose depth the layer's rows take (the first tap after it).
    pub tap: usize,
}

/// The activation kind of a name in a layout.
pub fn activation_kind(name: &str) -> ActivationKind {
    match name {
        "relu" => ActivationKind::Relu,
        "leaky_relu" => ActivationKind::LeakyRelu,
        "gelu" => ActivationKind::Gelu,
        "gelu_tanh" => ActivationKind::GeluTanh,
        "silu" => ActivationKind::Silu,
        "tanh" => ActivationKind::Tanh,
        "identity" => ActivationKind::Identity,
        _ => ActivationKind::Other,
    }
}

impl LayerLayout {
    pub fn name(&self) -> &str {
        match self {
            LayerLayout::Dense { name, .. } | LayerLayout::Conv2d { name, .. } => name,
        }
    }

    fn kind(&self) -> LayerKind {
        match self {
            LayerLayout::Dense { .. } => LayerKind::Dense,
            LayerLayout::Conv2d { .. } => LayerKind::Conv2d,
        }
    }

    fn geometry(&self) -> BlockGeometry {
        match *self {
            LayerLayout::Dense { in_features, out_features, positions: Some(positions), .. } => {
                BlockGeometry::Tokens { positions, in_features, out_features }
            }
            LayerLayout::Dense { in_features, .. } => BlockGeometry::Dense { features: in_features },
            LayerLayout::Conv2d { in_channels, height, width, kernel, stride, padding, out_channels, out_height, out_width, .. } => {
                BlockGeometry::Conv { in_channels, height, width, kernel, stride, padding, out_channels, out_height, out_width }
            }
        }
    }

    /// Per-sample shape of the layer's input.
    pub fn input_shape(&self) -> Vec<usize> {
        match *self {
            LayerLayout::Dense { in_features, positions: Some(t), .. } => vec![t, in_features],
            LayerLayout::Dense { in_features, .. } => vec![in_features],
            LayerLayout::Conv2d { in_channels, height, width, .. } => vec![in_channels, height, width],
        }
    }

    /// Shape of the weight as stored: `[out, fan_in]`.
    pub fn weight_shape(&self) -> Vec<usize> {
        match *self {
            LayerLayout::Dense { in_features, out_features, .. } => vec![out_features, in_features],
            LayerLayout::Conv2d { in_channels, kernel, groups, out_channels, .. } => {
                vec![out_channels, in_channels / groups.max(1) * kernel * kernel]
            }
        }
    }

    /// The per-sample shape of its output.
    fn output_shape(&self) -> Vec<usize> {
        match *self {
            LayerLayout::Dense { out_features, positions: Some(t), .. } => vec![t, out_features],
            LayerLayout::Dense { out_features, .. } => vec![out_features],
            LayerLayout::Conv2d { out_channels, out_height, out_width, .. } => vec![out_channels, out_height, out_width],
        }
    }
}

impl Layout {
    /// Checks that the layout describes a network lintrace can analyse.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_classes == 0 || self.predictions_per_sample == 0 {
            return Err("num_classes and predictions_per_sample must be positive".into());
        }
        for (i, t) in self.taps.iter().enumerate() {
            if t.shape.is_empty() || t.shape.contains(&0) {
                return Err(format!("tap {i} ({}): shape {:?} is empty", t.name, t.shape));
            }
            let Some(layer) = &t.layer else { continue };
            if layer.output_shape() != t.shape {
                return Err(format!(
                    "tap {i} ({}): layer {} gives shape {:?}, but the tap's shape is {:?}",
                    t.name,
                    layer.name(),
                    layer.output_shape(),
                    t.shape
                ));
            }
            if let LayerLayout::Conv2d {
                in_channels,
                height,
                width,
                kernel,
                stride,
                padding,
                groups,
                out_channels,
                out_height,
                out_width,
                ..
            } = *layer
            {
                if kernel == 0 || stride == 0 || groups == 0 || in_channels % groups != 0 || out_channels % groups != 0 {
                    return Err(format!("tap {i} ({}): convolution {} is malformed", t.name, layer.name()));
                }
                let expect =
                    (crate::spec::conv_out(height, kernel, stride, padding), crate::spec::conv_out(width, kernel, stride, padding));
                if expect != (out_height, out_width) {
                    return Err(format!(
                        "tap {i} ({}): a {kernel}×{kernel} convolution with stride {stride} and padding {padding} maps {height}×{width} to {}×{}, not {out_height}×{out_width}",
                        t.name, expect.0, expect.1
                    ));
                }
            }
        }
        for (j, a) in self.attention.iter().enumerate() {
            if a.heads == 0 || a.positions == 0 || a.tap >= self.taps.len() {
                return Err(format!("attention layer {j} ({}): heads, positions or tap out of range", a.name));
            }
        }
        Ok(())
    }

    /// The model as the analyzers see it. `with_inputs`: per tap, whether
    /// its layer's input was captured (a tap without it gets no block fit).
    pub fn model_info(&self, n_probe: usize, with_inputs: &[bool]) -> ModelInfo {
        let taps = self
            .taps
            .iter()
            .enumerate()
            .map(|(index, t)| {
                let units = t.shape.iter().product();
                let (layer_kind, block, input_units) = match (&t.layer, with_inputs.get(index).copied().unwrap_or(false)) {
                    (Some(l), true) => (l.kind(), l.geometry(), l.input_shape().iter().product()),
                    (Some(l), false) => (l.kind(), BlockGeometry::Dense { features: 0 }, 0),
                    (None, _) => (LayerKind::Dense, BlockGeometry::Dense { features: 0 }, 0),
                };
                TapInfo { index, activation: activation_kind(&t.activation), layer_kind, units, input_units, block }
            })
            .collect();
        let attention = self
            .attention
            .iter()
            .map(|a| AttentionInfo { name: a.name.clone(), heads: a.heads, positions: a.positions, causal: a.causal, tap: a.tap })
            .collect();
        ModelInfo { taps, residual_blocks: Vec::new(), attention, num_classes: self.num_classes, n_probe }
    }

    /// Per tap, the `layer_name` and `layer_kind` of its rows: the tap's
    /// own name, and its layer's kind (`activation` when none is known).
    pub fn row_names(&self) -> Vec<(String, &'static str)> {
        self.taps.iter().map(|t| (t.name.clone(), t.layer.as_ref().map_or("activation", |l| l.kind().as_str()))).collect()
    }
}

/// One checkpoint's captured activations, mapped.
pub struct ActivationFile {
    pub path: PathBuf,
    pub step: u64,
    pub run_id: String,
    pub probe_hash: String,
    /// Probe samples.
    pub n: usize,
    pub layout: Layout,
    /// Per tap, whether `taps.i.input` is in the file.
    pub has_input: Vec<bool>,
    mmap: memmap2::Mmap,
    /// Every tensor's dtype, shape and bytes in `mmap`, from the header
    /// parsed once at `open` (a pass reads every tap chunk by chunk).
    index: HashMap<String, Entry>,
}

/// Where a tensor lies in a mapped file.
struct Entry {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: std::ops::Range<usize>,
}

fn float_dtype(d: safetensors::Dtype) -> bool {
    matches!(d, safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16)
}

impl ActivationFile {
    /// Opens and checks a file: its metadata, layout, and every tensor's
    /// presence, float dtype and shape. Errors name the file.
    pub fn open(path: &Path) -> Result<ActivationFile> {
        Self::open_inner(path).with_context(|| format!("{}", path.display()))
    }

    fn open_inner(path: &Path) -> Result<ActivationFile> {
        let file = std::fs::File::open(path).context("cannot open")?;
        // SAFETY: read-only map; the Python package writes these files by
        // atomic rename, never in place.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.context("cannot map")?;
        checkpoint::unique_names(&mmap)?;
        let (_, header) = SafeTensors::read_metadata(&mmap).map_err(|e| anyhow!("not a valid safetensors file ({e})"))?;
        let md: HashMap<String, String> = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| md.get(k).map(String::as_str).ok_or_else(|| anyhow!("metadata '{k}' is missing"));
        if md.get("format").map(String::as_str) != Some(FORMAT) {
            bail!("not a lintrace activations file (metadata 'format' is not '{FORMAT}'; write it with lintrace.capture_activations)");
        }
        let version = get("format_version")?;
        if version != FORMAT_VERSION {
            bail!("activations format version {version}; this lintrace reads version {FORMAT_VERSION}");
        }
        let step: u64 = get("step")?.parse().map_err(|_| anyhow!("metadata 'step' is not a step number"))?;
        let n: usize = get("n")?.parse().map_err(|_| anyhow!("metadata 'n' is not a sample count"))?;
        let layout: Layout = serde_json::from_str(get("layout")?).map_err(|e| anyhow!("metadata 'layout': {e}"))?;
        layout.validate().map_err(|e| anyhow!("metadata 'layout': {e}"))?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| anyhow!("not a valid safetensors file ({e})"))?;
        let check = |name: &str, shape: &[usize]| -> Result<()> {
            let v = st.tensor(name).map_err(|_| anyhow!("tensor '{name}' is missing"))?;
            if !float_dtype(v.dtype()) {
                bail!("tensor '{name}' has dtype {:?}; expected f32, f16 or bf16", v.dtype());
            }
            if v.shape() != shape {
                bail!("tensor '{name}' has shape {:?}; the layout says {shape:?}", v.shape());
            }
            Ok(())
        };
        let with_n = |s: &[usize]| std::iter::once(n).chain(s.iter().copied()).collect::<Vec<_>>();
        check("logits", &[n * layout.predictions_per_sample, layout.num_classes])?;
        let mut has_input = Vec::new();
        for (i, t) in layout.taps.iter().enumerate() {
            check(&format!("taps.{i}.z"), &with_n(&t.shape))?;
            check(&format!("taps.{i}.a"), &with_n(&t.shape))?;
            let input = format!("taps.{i}.input");
            let present = st.names().iter().any(|k| **k == input);
            match &t.layer {
                Some(l) => {
                    if present {
                        check(&input, &with_n(&l.input_shape()))?;
                    }
                    check(&format!("taps.{i}.weight"), &l.weight_shape())?;
                }
                None if present => bail!("tensor '{input}': tap {i} has no layer in the layout"),
                None => {}
            }
            has_input.push(present && t.layer.is_some());
        }
        for (j, a) in layout.attention.iter().enumerate() {
            check(&format!("attention.{j}"), &with_n(&[a.heads, a.positions, a.positions]))?;
        }
        let run_id = md.get("run_id").cloned().unwrap_or_default();
        let probe_hash = get("probe_hash")?.to_string();
        let base = mmap.as_ptr() as usize;
        let index = st
            .tensors()
            .into_iter()
            .map(|(name, v)| {
                let start = v.data().as_ptr() as usize - base;
                (name, Entry { dtype: v.dtype(), shape: v.shape().to_vec(), bytes: start..start + v.data().len() })
            })
            .collect();
        drop(st);
        Ok(ActivationFile { path: path.to_path_buf(), step, run_id, probe_hash, n, layout, has_input, mmap, index })
    }

    pub fn model_info(&self) -> ModelInfo {
        self.layout.model_info(self.n, &self.has_input)
    }

    /// The view of tensor `name`, or of its rows `rows` (along the first
    /// dimension).
    fn view(&self, name: &str, rows: Option<std::ops::Range<usize>>) -> Result<safetensors::tensor::TensorView<'_>> {
        let e = self.index.get(name).ok_or_else(|| anyhow!("{}: tensor '{name}' is missing", self.path.display()))?;
        let (mut shape, mut bytes) = (e.shape.clone(), e.bytes.clone());
        if let Some(r) = rows {
            let total = shape.first().copied().unwrap_or(0);
            if r.end > total {
                bail!("{}: tensor '{name}' has {total} rows, not {}", self.path.display(), r.end);
            }
            let per_row = bytes.len() / total.max(1);
            bytes = bytes.start + r.start * per_row..bytes.start + r.end * per_row;
            shape[0] = r.len();
        }
        safetensors::tensor::TensorView::new(e.dtype, shape, &self.mmap[bytes])
            .map_err(|err| anyhow!("{}: tensor '{name}': {err}", self.path.display()))
    }

    /// Rows `first..first + count` (along the first dimension) of tensor
    /// `name`, as f32 on `device`.
    pub fn rows(&self, name: &str, first: usize, count: usize, device: &Device) -> Result<Tensor> {
        let view = self.view(name, Some(first..first + count))?;
        Ok(checkpoint::f32_tensor(name, &view)?.to_device(device)?)
    }

    /// The weight matrices feeding the taps whose layer is known.
    pub fn weights(&self) -> Result<Vec<LayerWeights>> {
        let mut out = Vec::new();
        for (tap, t) in self.layout.taps.iter().enumerate() {
            let Some(l) = &t.layer else { continue };
            let name = format!("taps.{tap}.weight");
            let w = checkpoint::f32_tensor(&name, &self.view(&name, None)?)?;
            let s = l.weight_shape();
            out.push(LayerWeights { tap, rows: s[0], cols: s[1], data: w.flatten_all()?.to_vec1()? });
        }
        Ok(out)
    }
}

/// The activation files of a run folder's `activations/`, by step; files
/// not named `step_*.safetensors` are ignored.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = run_dir.join(DIR);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let path = e.with_context(|| format!("{}: cannot list", dir.display()))?.path();
        if path.extension().is_some_and(|x| x == "safetensors") {
            if let Some(step) = checkpoint::step_from_file_name(&path) {
                out.push((step, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `dir` is a run folder with captured activations.
pub fn has_activations(dir: &Path) -> bool {
    list(dir).is_ok_and(|v| !v.is_empty())
}
