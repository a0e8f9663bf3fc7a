//! What to analyse: a trainer run directory, every run under a runs root, or
//! a bare folder of checkpoints written elsewhere (with a spec and a probe).

use super::runs_table::{self, RunRow};
use crate::checkpoint::{self, CheckpointMeta};
use crate::hf::series::{self, Revision};
use crate::probe::{self, Probe};
use crate::run::{self, RunManifest};
use crate::spec::ModelSpec;
use crate::sweep::Sweep;
use crate::tables::Table;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The dataset name in the run.json of a run trained outside lintrace
/// (written by the Python package): its data is not one lintrace reloads.
pub const EXTERNAL_DATASET: &str = "external";

pub(super) enum Origin {
    Run(Box<RunManifest>),
    /// Checkpoints from elsewhere; only the spec is known.
    External {
        base: PathBuf,
        renames: Vec<(String, String)>,
        step_pattern: Option<regex::Regex>,
    },
    /// A series of Hugging Face revisions; the spec comes from their
    /// `config.json`, the step from each revision's name.
    HuggingFace {
        revisions: BTreeMap<PathBuf, Revision>,
        /// The bigram surrogate for `mu`, when the probe came from text.
        bigram: Option<crate::hf::text::Bigram>,
    },
    /// A run trained in PyTorch with an architecture lintrace does not
    /// rebuild: its activations were captured per checkpoint by the Python
    /// package (`crate::activations`), and those files are the checkpoints.
    Captured {
        layout: crate::activations::Layout,
    },
}

/// Where a Hugging Face series' probe comes from (`lintrace-analyze
/// --probe`, `--probe-text`, ...): token ids given as a probe file, or
/// windows of a text tokenized with the model's own tokenizer. Without
/// either, the probe an earlier analysis stored is used again.
#[derive(Debug, Clone, Default)]
pub struct HfProbe {
    pub probe: Option<PathBuf>,
    pub text: Option<PathBuf>,
    /// Default: the first revision's `tokenizer.json`.
    pub tokenizer: Option<PathBuf>,
    /// Tokens per window (default 512, or the stored probe's).
    pub context: Option<usize>,
    /// Tokens in all (default 4,096).
    pub tokens: Option<usize>,
    pub run_id: Option<String>,
}

/// What a target's rows are called: per tap (layer name, layer kind), per
/// residual block (name, kind), per attention layer its name.
#[derive(Debug, Clone, Default)]
pub struct RowNames {
    pub taps: Vec<(String, String)>,
    pub blocks: Vec<(String, &'static str)>,
    pub attention: Vec<String>,
}

pub struct Target {
    pub run_id: String,
    /// Where the tables go (`RUN_DIR/analysis`).
    pub out_dir: PathBuf,
    pub probe: Probe,
    /// The architecture, for every origin but captured activations (whose
    /// layout is in their files).
    pub spec: Option<ModelSpec>,
    pub checkpoints: Vec<PathBuf>,
    /// Identity for checkpoints without lintrace metadata.
    pub fallback: Option<CheckpointMeta>,
    /// The sweep whose folder holds this run, if any.
    pub sweep_id: Option<String>,
    pub(super) origin: Origin,
    /// Files already checked against run.json in this analysis.
    pub(super) verified: std::sync::OnceLock<std::collections::BTreeSet<PathBuf>>,
}

/// Where to find checkpoints written elsewhere.
pub struct External {
    /// A spec JSON file, a lintrace run folder (its run.json's spec), or a
    /// preset name (`mlp`, `cnn`: lintrace's defaults) with `num_classes`
    /// and `input`.
    pub spec: String,
    pub probe: PathBuf,
    pub run_id: Option<String>,
    pub num_classes: Option<usize>,
    pub input: Option<Vec<usize>>,
    /// Name prefixes to map (FROM, TO), applied before anything else.
    pub renames: Vec<(String, String)>,
    /// A regex whose first group (or match) is the step, applied to each
    /// checkpoint's path relative to the folder.
    pub step_from: Option<String>,
}

impl External {
    /// The model spec this names.
    pub fn resolve_spec(&self) -> Result<ModelSpec> {
        let path = Path::new(&self.spec);
        if run::is_run_dir(path) {
            let m = RunManifest::read(path)?;
            return ModelSpec::from_json(&m.spec.to_string())
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{}: 'spec'", path.join(run::MANIFEST).display()));
        }
        if path.is_file() {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read spec", path.display()))?;
            return ModelSpec::from_json(&text).map_err(anyhow::Error::msg).with_context(|| format!("{}", path.display()));
        }
        // `torchvision:resnet18` is torchvision's layout (the default of
        // the resnet18/34/50 presets); `-small` selects the 3×3 stem without
        // max-pool that 32×32 inputs use.
        let name = self.spec.strip_prefix("torchvision:").unwrap_or(&self.spec);
        let (name, small) = match name.strip_suffix("-small") {
            Some(n) => (n, true),
            None => (name, false),
        };
        use crate::spec::presets::{self, Family};
        // nanoGPT's shakespeare_char layout (GELU, no biases, tied), as a
        // language model: --num-classes is the vocabulary, --input the
        // context. (`gpt-char-small` is a name, not `gpt-char` with the
        // small stem.)
        let gpt = presets::family(&self.spec) == Some(Family::CharGpt);
        let (name, small) = if gpt { (self.spec.as_str(), false) } else { (name, small) };
        let exact = name == self.spec;
        let family = presets::family(name);
        // timm's ViT layout at the presets' sizes (GELU, as timm's).
        let vit = family == Some(Family::Vit) && exact;
        let known = match family {
            Some(Family::Resnet) => true,
            Some(Family::Vgg) => !small,
            Some(Family::CharGpt) => gpt,
            Some(f) => exact && presets::for_foreign_checkpoints(f),
            None => false,
        };
        if !known {
            bail!(
                "--spec {}: neither a spec file, a run folder, nor a preset ({}; torchvision:resnetN, resnetN-small)",
                self.spec,
                presets::listed(presets::for_foreign_checkpoints)
            );
        }
        let (Some(classes), Some(input)) = (self.num_classes, self.input.as_ref()) else {
            bail!("--spec {}: a preset needs --num-classes and --input (e.g. --input 3,32,32)", self.spec);
        };
        let stem = small.then_some(crate::spec::Stem::Small);
        let activation = if vit || gpt { "gelu" } else { "relu" }.to_string();
        let mut cfg = crate::config::TrainConfig { model: name.to_string(), stem, activation, ..Default::default() };
        if gpt {
            cfg.data.dataset = "text".into();
        }
        cfg.model_spec(input, classes, gpt.then_some(classes)).with_context(|| format!("--spec {}", self.spec))
    }
}

/// What a chunk's recorded values may take when the chunk size is chosen
/// automatically ([`Target::default_chunk`]).
pub const CHUNK_BUDGET: u64 = 3 << 30;

/// Resolves command-line paths into targets. Runs that cannot even be
/// opened are returned as failures so the others still run.
pub fn discover(paths: &[PathBuf], external: Option<&External>) -> Result<(Vec<Target>, Vec<(PathBuf, String)>)> {
    discover_with(paths, external, &HfProbe::default())
}

/// [`discover`], with the probe of Hugging Face series.
pub fn discover_with(paths: &[PathBuf], external: Option<&External>, hf: &HfProbe) -> Result<(Vec<Target>, Vec<(PathBuf, String)>)> {
    let mut targets = Vec::new();
    let mut failures = Vec::new();
    let mut sweeps = HashMap::new();
    for path in paths {
        if !path.exists() {
            bail!("{}: does not exist", path.display());
        }
        if let Some(ext) = external {
            targets.push(Target::external(path, ext)?);
            continue;
        }
        if !run::is_run_dir(path) && crate::activations::has_activations(path) {
            targets.push(Target::captured(path)?);
            continue;
        }
        if !run::is_run_dir(path) && series::is_series(path) {
            targets.extend(Target::hugging_face(path, hf)?);
            continue;
        }
        let run_dirs: Vec<PathBuf> = if run::is_run_dir(path) {
            vec![path.clone()]
        } else if path.is_dir() {
            let v = run::run_dirs_under(path)?;
            // Runs of captured activations (no run.json) under the same root.
            let captured: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("{}: cannot read", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| !run::is_run_dir(p) && crate::activations::has_activations(p))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            for dir in &captured {
                match Target::captured(dir) {
                    Ok(t) => targets.push(t),
                    Err(e) => failures.push((dir.clone(), format!("{e:#}"))),
                }
            }
            if v.is_empty() && !captured.is_empty() {
                continue;
            }
            if v.is_empty() && path.join(run::PROBE).is_file() && path.join(crate::layout::CHECKPOINTS).is_dir() {
                bail!(
                    "{}: checkpoints of a model lintrace has no spec for: capture its activations in PyTorch (lintrace.capture_activations, docs/pytorch.md), or pass --spec and --probe",
                    path.display()
                );
            }
            if v.is_empty() {
                bail!(
                    "{}: no runs found (a run folder holds run.json; for checkpoints written elsewhere pass --spec and --probe)",
                    path.display()
                );
            }
            v
        } else {
            bail!("{}: not a run folder (pass --spec and --probe to analyse checkpoints written elsewhere)", path.display());
        };
        for dir in run_dirs {
            match Target::run(&dir) {
                Ok(mut t) => {
                    t.sweep_id = sweep_of(&mut sweeps, &dir, &t.run_id);
                    targets.push(t)
                }
                Err(e) => failures.push((dir, format!("{e:#}"))),
            }
        }
    }
    Ok((targets, failures))
}

/// The sweep a run folder belongs to: its parent is a sweep folder whose
/// sweep.json lists the run. Each sweep.json is read once per discovery.
fn sweep_of(cache: &mut HashMap<PathBuf, Option<Sweep>>, run_dir: &Path, run_id: &str) -> Option<String> {
    let parent = run_dir.parent()?;
    let sweep =
        cache.entry(parent.to_path_buf()).or_insert_with(|| Sweep::is_sweep_dir(parent).then(|| Sweep::load(parent).ok()).flatten());
    sweep.as_ref().filter(|s| s.runs.iter().any(|r| r.run_id == run_id)).map(|s| s.name.clone())
}

impl Target {
    fn run(dir: &Path) -> Result<Target> {
        let manifest = RunManifest::read(dir)?;
        let spec = ModelSpec::from_json(&manifest.spec.to_string())
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{}: 'spec'", dir.join(run::MANIFEST).display()))?;
        let probe = probe::load(&dir.join(run::PROBE))?;
        let checkpoints = checkpoint::list(&run::checkpoint_dir(dir), false)?;
        Ok(Target {
            run_id: manifest.run_id.clone(),
            out_dir: dir.join(run::ANALYSIS),
            probe,
            spec: Some(spec),
            checkpoints,
            fallback: None,
            sweep_id: None,
            origin: Origin::Run(Box::new(manifest)),
            verified: Default::default(),
        })
    }

    fn external(path: &Path, ext: &External) -> Result<Target> {
        let spec = ext.resolve_spec()?;
        let probe = probe::load(&ext.probe)?;
        let step_pattern = match &ext.step_from {
            Some(p) => Some(regex::Regex::new(p).map_err(|e| anyhow::anyhow!("--step-from: not a valid regex ({e})"))?),
            None => None,
        };
        let (mut checkpoints, base) = if path.is_file() {
            (vec![path.to_path_buf()], path.parent().unwrap_or(Path::new(".")).to_path_buf())
        } else {
            (crate::interop::list_foreign(path)?, path.to_path_buf())
        };
        let run_id = ext.run_id.clone().unwrap_or_else(|| {
            let abs = base.canonicalize().unwrap_or(base.clone());
            abs.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "external".into())
        });
        let fallback = CheckpointMeta { spec: spec.clone(), run_id: run_id.clone(), step: 0, epoch: 0.0, samples_seen: 0 };
        let mut t = Target {
            run_id,
            out_dir: base.join(run::ANALYSIS),
            probe,
            spec: Some(spec),
            checkpoints: Vec::new(),
            fallback: Some(fallback),
            sweep_id: None,
            origin: Origin::External { base, renames: ext.renames.clone(), step_pattern },
            verified: Default::default(),
        };
        checkpoints.sort_by_key(|p| (t.step_of(p), p.clone()));
        t.checkpoints = checkpoints;
        Ok(t)
    }

    /// The targets of a Hugging Face series: one per trajectory, since
    /// revisions whose names differ only in step (and token count) belong
    /// to one run, and a stage or ingredient whose step count restarts
    /// (OLMo-2's `stage2-ingredient1-step1000-…`) is a run of its own.
    fn hugging_face(path: &Path, opts: &HfProbe) -> Result<Vec<Target>> {
        let revs = series::discover(path)?;
        let base = path.to_path_buf();
        let analysis = base.join(run::ANALYSIS);
        let stored = analysis.join(run::PROBE);
        // A probe file given, or else (no text either) the one stored by an
        // earlier analysis, read once.
        let given = match (&opts.probe, &opts.text) {
            (Some(_), Some(_)) => bail!("--probe and --probe-text: give one"),
            (Some(p), None) => Some(probe::load(p)?),
            (None, None) if stored.is_file() => Some(probe::load(&stored)?),
            _ => None,
        };
        let context = match (&given, &opts.context) {
            (Some(p), Some(c)) if p.sample_shape != [*c] => {
                bail!("--context {c}: the probe's windows hold {:?} tokens", p.sample_shape)
            }
            (Some(p), _) => p.sample_shape.first().copied().unwrap_or(0),
            (None, Some(c)) => *c,
            (None, None) => 512,
        };
        // Every revision must describe the same model.
        let first = &revs[0];
        let spec = crate::hf::config::spec_of(&first.dir.join("config.json"), context)?;
        for r in &revs[1..] {
            let other = crate::hf::config::spec_of(&r.dir.join("config.json"), context)?;
            if other != spec {
                bail!(
                    "{}: describes another model than {} (revision {} vs {})",
                    r.dir.join("config.json").display(),
                    first.dir.join("config.json").display(),
                    r.name,
                    first.name
                );
            }
        }
        let crate::spec::Arch::HfCausalLm(arch) = &spec.arch else { unreachable!("spec_of returns a Hugging Face spec") };
        crate::hf::load::check_shapes(&first.dir, arch, &spec)?;
        // A probe from text also gives the bigram surrogate for `mu`,
        // counted on the text outside the probe's windows.
        let (probe, bigram) = match (given, &opts.text) {
            (Some(p), _) => (p, None),
            (None, Some(text)) => {
                let tokenizer = opts.tokenizer.clone().unwrap_or_else(|| first.dir.join("tokenizer.json"));
                if !tokenizer.is_file() {
                    bail!("{}: no tokenizer.json (pass --tokenizer FILE)", first.dir.display());
                }
                let ids = crate::hf::text::tokenize(text, &tokenizer, arch.vocab)?;
                let tokens = opts.tokens.unwrap_or(4096);
                let name = text.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let probe = crate::hf::text::windows(&ids, context, (tokens / context.max(1)).max(1), &name)
                    .with_context(|| format!("{}", text.display()))?;
                let spans: Vec<(usize, usize)> = probe.indices.iter().map(|&s| (s as usize, context)).collect();
                let bigram = crate::hf::text::Bigram::count(&ids, &spans, arch.vocab).ok();
                (probe, bigram)
            }
            (None, None) => bail!(
                "{}: Hugging Face checkpoints need a probe: --probe-text FILE (tokenized with the model's tokenizer; --context, --probe-size) or --probe FILE (token ids)",
                path.display()
            ),
        };
        if let Some(&bad) = probe.labels.iter().find(|&&y| y < 0 || y as usize >= arch.vocab) {
            bail!("the probe's token {bad} is outside the model's {} embedding rows", arch.vocab);
        }
        if let Err(e) = spec.check_inputs(&probe.inputs) {
            bail!("the probe does not fit the model: {e}");
        }
        let name = opts.run_id.clone().unwrap_or_else(|| {
            let abs = base.canonicalize().unwrap_or(base.clone());
            abs.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "huggingface".into())
        });
        let mut groups: BTreeMap<String, Vec<Revision>> = BTreeMap::new();
        for r in revs {
            groups.entry(series::trajectory(&r.name)).or_default().push(r);
        }
        let single = groups.len() == 1;
        let mut targets = Vec::new();
        for (group, members) in groups {
            let (run_id, out_dir) = if single || group.is_empty() {
                (name.clone(), analysis.clone())
            } else {
                (format!("{name}@{group}"), analysis.join(&group))
            };
            // The probe is part of what the tables mean: stored once, and a
            // different one later is refused rather than mixed in.
            let probe_file = out_dir.join(run::PROBE);
            if probe_file.is_file() {
                let old = probe::load(&probe_file)?;
                if old.hash != probe.hash {
                    bail!(
                        "{}: this series was analysed with probe {}, not {} (give another --run-id, or remove that analysis folder)",
                        probe_file.display(),
                        old.hash,
                        probe.hash
                    );
                }
            } else {
                std::fs::create_dir_all(&out_dir).with_context(|| format!("{}: cannot create", out_dir.display()))?;
                probe::save(&probe_file, &probe)?;
                if let Some(b) = &bigram {
                    b.save(&out_dir.join(crate::hf::text::BIGRAM_FILE))?;
                }
            }
            let bigram_file = out_dir.join(crate::hf::text::BIGRAM_FILE);
            let bigram = if bigram_file.is_file() { Some(crate::hf::text::Bigram::load(&bigram_file)?) } else { None };
            let fallback = CheckpointMeta { spec: spec.clone(), run_id: run_id.clone(), step: 0, epoch: 0.0, samples_seen: 0 };
            let revisions: BTreeMap<PathBuf, Revision> = members.iter().map(|r| (r.dir.clone(), r.clone())).collect();
            targets.push(Target {
                run_id,
                out_dir,
                probe: probe.clone(),
                spec: Some(spec.clone()),
                checkpoints: members.iter().map(|r| r.dir.clone()).collect(),
                fallback: Some(fallback),
                sweep_id: None,
                origin: Origin::HuggingFace { revisions, bigram },
                verified: Default::default(),
            });
        }
        Ok(targets)
    }

    pub fn is_hugging_face(&self) -> bool {
        matches!(self.origin, Origin::HuggingFace { .. })
    }

    /// The bigram surrogate of a Hugging Face series whose probe came from
    /// text.
    pub fn bigram(&self) -> Option<&crate::hf::text::Bigram> {
        match &self.origin {
            Origin::HuggingFace { bigram, .. } => bigram.as_ref(),
            _ => None,
        }
    }

    /// The checkpoint of `step`, if the target has one.
    pub fn checkpoint_at(&self, step: u64) -> Option<&PathBuf> {
        self.checkpoints.iter().find(|p| self.step_of(p) == Some(step))
    }

    /// The revision name a checkpoint was read from (Hugging Face series),
    /// else its file name.
    pub fn checkpoint_name(&self, path: &Path) -> String {
        match &self.origin {
            Origin::HuggingFace { revisions, .. } => revisions.get(path).map(|r| r.name.clone()),
            _ => None,
        }
        .unwrap_or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
    }

    /// The step a checkpoint file holds: `step_N` for lintrace files, else
    /// the last run of digits in the file name (`epoch_3_step_1200.safetensors` → 1200).
    pub fn step_of(&self, path: &Path) -> Option<u64> {
        match &self.origin {
            Origin::External { base, step_pattern, .. } => {
                let rel = path.strip_prefix(base).unwrap_or(path).to_string_lossy().into_owned();
                crate::interop::step_from_name(&rel, step_pattern.as_ref())
            }
            Origin::Run(_) | Origin::Captured { .. } => checkpoint::step_from_file_name(path),
            Origin::HuggingFace { revisions, .. } => revisions.get(path).and_then(|r| r.step),
        }
    }

    /// The dataset this run was trained on, when known. A run folder
    /// written outside lintrace's trainer (the Python package,
    /// `python/lintrace`) names the dataset [`EXTERNAL_DATASET`]: lintrace
    /// cannot reload it, so `mu` uses the probe.
    pub fn data_config(&self) -> Option<crate::data::DataConfig> {
        match &self.origin {
            Origin::Run(m) if m.config.data.dataset == EXTERNAL_DATASET => None,
            Origin::Run(m) => Some(m.config.data.clone()),
            Origin::External { .. } | Origin::HuggingFace { .. } | Origin::Captured { .. } => None,
        }
    }

    /// Rough peak bytes for one checkpoint in flight: parameters (host and
    /// device copies), a chunk's activations (z and a, each copied to the
    /// host, plus candle's intermediates), the accumulators' state, and
    /// whatever whole-probe data the selected analyzers need.
    /// The SHA-256 recorded in run.json for the checkpoint of `step` when it
    /// was written (none for checkpoints from elsewhere or older runs).
    pub fn recorded_sha256(&self, step: u64) -> Option<&str> {
        match &self.origin {
            Origin::Run(m) => m.checkpoint_sha256.get(&step).map(String::as_str),
            Origin::External { .. } | Origin::HuggingFace { .. } | Origin::Captured { .. } => None,
        }
    }

    /// Steps whose checkpoint run.json recorded as written but which are not
    /// among this target's files (deleted or lost since).
    pub fn missing_checkpoints(&self) -> Vec<PathBuf> {
        let (Origin::Run(m), Some(run_dir)) = (&self.origin, self.out_dir.parent()) else { return Vec::new() };
        let present: std::collections::BTreeSet<u64> = self.checkpoints.iter().filter_map(|p| self.step_of(p)).collect();
        m.checkpoint_sha256
            .keys()
            .filter(|s| !present.contains(s))
            .map(|&s| run::checkpoint_dir(run_dir).join(checkpoint::file_name(s)))
            .collect()
    }

    /// For checkpoints from elsewhere, what besides the weights decides
    /// their results: the spec and the renames (None for lintrace runs,
    /// whose spec is fixed by the run).
    pub fn foreign_identity(&self) -> Option<String> {
        let spec = || self.spec.as_ref().map(ModelSpec::to_json).unwrap_or_default();
        match &self.origin {
            Origin::External { renames, .. } => Some(format!("{}|{renames:?}", spec())),
            Origin::HuggingFace { .. } => Some(spec()),
            // The activations file's own hash decides its results.
            Origin::Captured { .. } => Some("activations".into()),
            Origin::Run(_) => None,
        }
    }

    /// The captured layout of a run whose activations were captured in
    /// PyTorch.
    pub fn captured_layout(&self) -> Option<&crate::activations::Layout> {
        match &self.origin {
            Origin::Captured { layout } => Some(layout),
            _ => None,
        }
    }

    /// The architecture of a target that has one (every origin but
    /// captured activations).
    pub fn model_spec(&self) -> Result<&ModelSpec> {
        self.spec.as_ref().ok_or_else(|| anyhow::anyhow!("{}: activations captured in PyTorch have no model lintrace can run", self.run_id))
    }

    /// Per tap, per residual block and per attention layer, the names the
    /// tables give their rows.
    pub fn row_names(&self) -> RowNames {
        match (&self.spec, &self.origin) {
            (_, Origin::Captured { layout }) => RowNames {
                taps: layout.row_names().into_iter().map(|(n, k)| (n, k.to_string())).collect(),
                blocks: Vec::new(),
                attention: layout.attention.iter().map(|a| a.name.clone()).collect(),
            },
            (Some(spec), _) => RowNames {
                taps: spec.taps().into_iter().map(|t| (t.layer_name.clone(), t.layer_kind.as_str().to_string())).collect(),
                blocks: spec.residual_blocks().into_iter().map(|b| (b.name.clone(), b.kind)).collect(),
                attention: spec.attention_layers().into_iter().map(|a| a.name.clone()).collect(),
            },
            (None, _) => RowNames::default(),
        }
    }

    /// Records files that were checked against run.json (once per analysis).
    pub fn mark_verified(&self, paths: impl IntoIterator<Item = PathBuf>) {
        let _ = self.verified.set(paths.into_iter().collect());
    }

    /// Loads the checkpoint at `path` (of `step`), first checking it against
    /// its recorded SHA-256 unless that was done in this analysis.
    pub fn load_checkpoint(&self, path: &std::path::Path, step: u64) -> anyhow::Result<checkpoint::Loaded> {
        let checked = self.verified.get().is_some_and(|v| v.contains(path));
        if let (false, Some(sha)) = (checked, self.recorded_sha256(step)) {
            checkpoint::verify(path, sha)?;
        }
        let fallback = self.fallback.as_ref().map(|f| CheckpointMeta { step, ..f.clone() });
        let renames = match &self.origin {
            Origin::External { renames, .. } => renames.as_slice(),
            Origin::Run(_) => &[],
            Origin::Captured { .. } => bail!("{}: holds captured activations, not weights lintrace can run", path.display()),
            Origin::HuggingFace { .. } => {
                let crate::spec::Arch::HfCausalLm(arch) = &self.model_spec()?.arch else {
                    unreachable!("a Hugging Face target has a Hugging Face spec")
                };
                let meta = fallback.ok_or_else(|| anyhow::anyhow!("a Hugging Face target has its identity"))?;
                let tensors = crate::hf::load::read_weights(path, arch)?;
                return Ok(checkpoint::Loaded { path: path.to_path_buf(), meta, tensors });
            }
        };
        checkpoint::load_foreign(path, fallback.as_ref(), renames)
    }

    /// Probe samples per forward pass when `--chunk-size` is not given:
    /// [`super::DEFAULT_CHUNK`], or on the CPU as many as keep a chunk's
    /// recorded values (taps, streams, attention weights, logits) near
    /// [`CHUNK_BUDGET`]. Every fresh page a pass touches is faulted in and
    /// zeroed by the kernel; a 160M language model's 16-window chunk (6.5
    /// GiB) spent a quarter of its time there, and 2-window chunks were a
    /// quarter faster (BENCHMARKS.md). A GPU keeps the default.
    pub fn default_chunk(&self, needs: analyzers::Needs, dev: &candle_core::Device) -> usize {
        let default = super::DEFAULT_CHUNK;
        if !dev.is_cpu() {
            return default;
        }
        let per_sample = self.memory_estimate(1, needs).saturating_sub(self.memory_estimate(0, needs));
        let positions = self.spec.as_ref().map_or(1, |s| s.predictions_per_sample()).max(1);
        crate::batches::chunk_within(CHUNK_BUDGET, per_sample, positions, default)
    }

    pub fn memory_estimate(&self, chunk: usize, needs: analyzers::Needs) -> u64 {
        let n_probe = self.probe.len();
        // Captured activations are read a chunk at a time from a mapped
        // file, like a forward pass's; there are no parameters to hold.
        let (info, params, stream_values) = match (&self.spec, &self.origin) {
            (_, Origin::Captured { layout }) => (layout.model_info(n_probe, &vec![true; layout.taps.len()]), 0, 0),
            (Some(spec), _) => (
                spec.model_info(n_probe),
                spec.num_parameters() as u64 * 4 * 2,
                spec.residual_blocks().iter().filter(|b| b.streams.is_some()).map(|b| b.in_shape.iter().product::<usize>() as u64).sum(),
            ),
            (None, _) => return 1 << 30,
        };
        let units: u64 = info.taps.iter().map(|t| t.units as u64).sum();
        let n = n_probe as u64;
        let activations = chunk as u64 * (units * 3 * 4) * 3;
        let state = units * 8 * 8;
        // Per tap: its activations, and the n × n Gram or (more rows than
        // features) the f × f covariance, twice in f64.
        let grams: u64 = if needs.grams {
            info.taps
                .iter()
                .map(|t| {
                    let rows = n * match t.block {
                        analyzers::BlockGeometry::Tokens { positions, .. } => positions as u64,
                        _ => 1,
                    };
                    let f = t.units as u64 * n / rows.max(1);
                    rows * f * 4 + rows.min(f).pow(2) * 8 * 2
                })
                .sum()
        } else {
            0
        };
        let blocks = if needs.block_inputs {
            info.taps
                .iter()
                .map(|t| match t.block {
                    analyzers::BlockGeometry::Dense { features } => features as u64,
                    analyzers::BlockGeometry::Conv { in_channels, kernel, .. } => (in_channels * kernel * kernel) as u64,
                    analyzers::BlockGeometry::Tokens { in_features, .. } => in_features as u64,
                })
                .map(|p| p * p * 8 * 3)
                .sum()
        } else {
            0
        };
        // A transformer's attention weights (f32, and the analyzer's f64
        // copy of one layer) and residual streams, per chunk.
        let attention: u64 = info.attention.iter().map(|a| (a.heads * a.positions * a.positions) as u64).sum();
        let attention = if needs.attention { chunk as u64 * attention * 4 * 3 } else { 0 };
        let streams = if needs.streams { stream_values * chunk as u64 * 4 } else { 0 };
        // A chunk's logits, on the device and on the host (a language
        // model's are a vocabulary wide at every position).
        let logits = self.spec.as_ref().map_or(0, |s| (s.predictions_per_sample() * s.num_classes) as u64) * chunk as u64 * 4 * 2;
        params + activations + state + grams + blocks + attention + streams + logits + (self.probe.inputs.len() as u64 * 4)
    }

    /// Writes this run's row of the `runs` table, with its final model
    /// metrics from `model_metrics` (the run's table as just written).
    pub fn write_runs_table(&self, model_metrics: &Table) -> Result<()> {
        let row = match &self.origin {
            Origin::Run(m) => RunRow::from_manifest(m, self.sweep_id.clone()),
            Origin::Captured { layout } => RunRow {
                run_id: self.run_id.clone(),
                status: "external".into(),
                lintrace_version: Some(env!("CARGO_PKG_VERSION").into()),
                probe_hash: Some(self.probe.hash.clone()),
                n_parameters: layout.n_parameters.map(|n| n as i64),
                n_taps: Some(layout.taps.len() as i32),
                config: serde_json::json!({ "activations": serde_json::to_value(layout)? }),
                ..Default::default()
            },
            Origin::External { .. } | Origin::HuggingFace { .. } => {
                let spec = self.model_spec()?;
                RunRow {
                    run_id: self.run_id.clone(),
                    status: "external".into(),
                    lintrace_version: Some(env!("CARGO_PKG_VERSION").into()),
                    probe_hash: Some(self.probe.hash.clone()),
                    n_parameters: Some(spec.num_parameters() as i64),
                    n_taps: Some(spec.num_taps() as i32),
                    config: serde_json::json!({ "spec": serde_json::from_str::<serde_json::Value>(&spec.to_json())? }),
                    ..Default::default()
                }
            }
        };
        runs_table::table(&[row.with_finals(model_metrics)]).write(&self.out_dir.join("runs.parquet"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_gpt_presets_name_a_nanogpt_language_model() {
        let ext = |spec: &str| External {
            spec: spec.into(),
            probe: PathBuf::new(),
            run_id: None,
            num_classes: Some(65),
            input: Some(vec![256]),
            renames: Vec::new(),
            step_from: None,
        };
        let spec = ext("gpt-char-small").resolve_spec().unwrap();
        assert!(matches!(
            spec.arch,
            crate::spec::Arch::Gpt(crate::spec::GptSpec {
                vocab: 65,
                dim: 384,
                depth: 6,
                heads: 6,
                mlp_hidden: 1536,
                bias: false,
                tied: true,
                lm: true,
                ..
            })
        ));
        assert_eq!((spec.predictions_per_sample(), spec.num_classes), (256, 65));
        let names: Vec<String> = spec.tensor_shapes().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"transformer.h.5.mlp.c_fc.weight".to_string()) && !names.iter().any(|n| n.ends_with(".bias")));
        assert!(ext("gpt-char-medium").resolve_spec().is_err());
    }
}
