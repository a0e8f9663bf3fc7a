//! The rows of a run's two metric tables, read from disk, replaced per
//! (step, analyzer) as new results arrive, and written back sorted.

use super::target::Target;
use crate::tables::{Table, Value};
use analyzers::{Analyzer, MetricValue};
use anyhow::{Context, Result};
use std::path::Path;

pub const LAYER: &str = "layer_metrics";
pub const MODEL: &str = "model_metrics";

/// Where and how rows were computed, recorded in every row.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub lintrace_version: String,
    pub device: String,
    pub precision: String,
}

impl Provenance {
    pub fn of(dev: &candle_core::Device) -> Provenance {
        let device = match dev.location() {
            candle_core::DeviceLocation::Cpu => "cpu".to_string(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        };
        // Forward passes in f32; moments, Grams, fits and solves in f64.
        Provenance { lintrace_version: env!("CARGO_PKG_VERSION").into(), device, precision: "f32/f64".into() }
    }

    fn values(&self) -> [Value; 3] {
        [Value::Str(self.lintrace_version.clone()), Value::Str(self.device.clone()), Value::Str(self.precision.clone())]
    }
}

pub struct Existing {
    layer: Table,
    model: Table,
}

fn read_or_new(dir: &Path, table: &str) -> Result<Table> {
    let path = dir.join(format!("{table}.parquet"));
    if !path.exists() {
        return Ok(Table::new(table));
    }
    Table::read(&path, table).context("existing table is unreadable (delete it, or pass --force to recompute everything)")
}

impl Existing {
    pub fn read(dir: &Path) -> Result<Self> {
        Ok(Existing { layer: read_or_new(dir, LAYER)?, model: read_or_new(dir, MODEL)? })
    }

    /// The model_metrics rows (sorted once written).
    pub fn model(&self) -> &Table {
        &self.model
    }

    pub fn empty() -> Self {
        Existing { layer: Table::new(LAYER), model: Table::new(MODEL) }
    }

    /// Drops every row of (step, analyzer), whatever its version or probe,
    /// and appends `values`, computed from the checkpoint named `revision`.
    pub fn replace(
        &mut self,
        step: u64,
        revision: &str,
        analyzer: &dyn Analyzer,
        values: &[MetricValue],
        target: &Target,
        prov: &Provenance,
    ) {
        for t in [&mut self.layer, &mut self.model] {
            let (si, ai) = (t.column_index("step").expect("step column"), t.column_index("analyzer").expect("analyzer column"));
            t.rows.retain(|r| !(r[si].as_i64() == Some(step as i64) && r[ai].as_str() == Some(analyzer.name())));
        }
        let names = target.row_names();
        let n_taps = names.taps.len().max(1) as f64;
        // Predictions: samples, or a language model's (window, position) pairs.
        let n = target.probe.labels.len() as i64;
        for v in values {
            match v.tap {
                Some(l) => {
                    let Some((tap_name, tap_kind)) = names.taps.get(l) else { continue };
                    // A residual block's row is named after the block; its
                    // layer is the block's output tap.
                    let block = v.block.and_then(|b| names.blocks.get(b));
                    let head = v.head.and_then(|(a, h)| Some((names.attention.get(a)?, h)));
                    let (name, kind) = match (block, head) {
                        (Some((b, kind)), _) => (b.clone(), *kind),
                        // docs/metrics.md: `<block>.attn.head<h>`.
                        (None, Some((att, h))) => (format!("{att}.head{h}"), "attention_head"),
                        (None, None) => (tap_name.clone(), tap_kind.as_str()),
                    };
                    let mut row = vec![
                        Value::Str(target.run_id.clone()),
                        Value::I64(step as i64),
                        Value::Str(revision.to_string()),
                        Value::I32(l as i32),
                        Value::Str(name),
                        Value::Str(kind.into()),
                        Value::F64((l + 1) as f64 / n_taps),
                        Value::Str(analyzer.name().into()),
                        Value::I32(analyzer.version() as i32),
                        Value::Str(v.metric.into()),
                        Value::opt_f64(v.value),
                        Value::Str(target.probe.hash.clone()),
                        Value::I64(n),
                        v.ref_step.map_or(Value::Null, |s| Value::I64(s as i64)),
                    ];
                    row.extend(prov.values());
                    self.layer.push(row);
                }
                None => {
                    let (samples, split) = v.samples.clone().unwrap_or((n as u64, "probe".into()));
                    let mut row = vec![
                        Value::Str(target.run_id.clone()),
                        Value::I64(step as i64),
                        Value::Str(revision.to_string()),
                        Value::Str(analyzer.name().into()),
                        Value::I32(analyzer.version() as i32),
                        v.surrogate.clone().map_or(Value::Null, Value::Str),
                        Value::Str(v.metric.into()),
                        Value::opt_f64(v.value),
                        Value::Str(target.probe.hash.clone()),
                        Value::I64(samples as i64),
                        Value::Str(split),
                    ];
                    row.extend(prov.values());
                    self.model.push(row);
                }
            }
        }
    }

    pub fn write(&mut self, dir: &Path) -> Result<()> {
        sort(&mut self.layer, &["step", "analyzer", "tap", "metric"]);
        sort(&mut self.model, &["step", "analyzer", "surrogate", "metric"]);
        self.layer.write(&dir.join(format!("{LAYER}.parquet")))?;
        self.model.write(&dir.join(format!("{MODEL}.parquet")))
    }
}

fn sort(t: &mut Table, keys: &[&str]) {
    let idx: Vec<usize> = keys.iter().map(|k| t.column_index(k).expect("sort key")).collect();
    t.rows.sort_by(|a, b| {
        for &i in &idx {
            let o = match (&a[i], &b[i]) {
                (Value::Str(x), Value::Str(y)) => x.cmp(y),
                (x, y) => x.as_i64().cmp(&y.as_i64()),
            };
            if o != std::cmp::Ordering::Equal {
                return o;
            }
        }
        std::cmp::Ordering::Equal
    });
}
