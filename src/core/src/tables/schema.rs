//! Table schemas, read from the versioned files in `schemas/` (embedded at
//! compile time, so the binary and the files can never disagree).

use anyhow::{anyhow, bail, Result};
use arrow::datatypes::{DataType, Field, Schema};
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Int32,
    Int64,
    Float64,
    Bool,
}

impl ColumnType {
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::String => DataType::Utf8,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Bool => DataType::Boolean,
        }
    }
    pub fn from_arrow(dt: &DataType) -> Option<Self> {
        Some(match dt {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::String,
            DataType::Int32 => ColumnType::Int32,
            DataType::Int64 => ColumnType::Int64,
            DataType::Float64 => ColumnType::Float64,
            DataType::Boolean => ColumnType::Bool,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    pub nullable: bool,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExtraColumns {
    /// v1 schemas name one prefix, later ones a list.
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub prefixes: Vec<String>,
    pub types: Vec<ColumnType>,
    pub nullable: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TableSchema {
    pub table: String,
    pub version: u32,
    #[serde(default)]
    pub description: String,
    pub columns: Vec<ColumnDef>,
    pub extra_columns: Option<ExtraColumns>,
}

const FILES: &[(&str, &str)] = &[
    ("layer_metrics.v1.json", include_str!("../../../../schemas/layer_metrics.v1.json")),
    ("checkpoints.v1.json", include_str!("../../../../schemas/checkpoints.v1.json")),
    ("layer_metrics.v2.json", include_str!("../../../../schemas/layer_metrics.v2.json")),
    ("layer_metrics.v3.json", include_str!("../../../../schemas/layer_metrics.v3.json")),
    ("layer_metrics.v4.json", include_str!("../../../../schemas/layer_metrics.v4.json")),
    ("model_metrics.v1.json", include_str!("../../../../schemas/model_metrics.v1.json")),
    ("model_metrics.v2.json", include_str!("../../../../schemas/model_metrics.v2.json")),
    ("model_metrics.v3.json", include_str!("../../../../schemas/model_metrics.v3.json")),
    ("runs.v1.json", include_str!("../../../../schemas/runs.v1.json")),
    ("runs.v2.json", include_str!("../../../../schemas/runs.v2.json")),
    ("train_log.v1.json", include_str!("../../../../schemas/train_log.v1.json")),
];

fn all_versions(table: &str) -> Vec<TableSchema> {
    FILES
        .iter()
        .map(|(f, text)| serde_json::from_str::<TableSchema>(text).unwrap_or_else(|e| panic!("schemas/{f} is invalid: {e}")))
        .filter(|s| s.table == table)
        .collect()
}

/// The current schema of `table`.
pub fn current(table: &str) -> TableSchema {
    all_versions(table).into_iter().max_by_key(|s| s.version).unwrap_or_else(|| panic!("no schema for table '{table}'"))
}

/// A given version of `table`'s schema, if lintrace knows it.
pub fn version(table: &str, version: u32) -> Option<TableSchema> {
    all_versions(table).into_iter().find(|s| s.version == version)
}

pub const META_TABLE: &str = "lintrace.table";
pub const META_VERSION: &str = "lintrace.schema_version";

impl TableSchema {
    /// The Arrow schema for these columns plus `extra` (name, type) columns.
    pub fn arrow(&self, extra: &[(String, ColumnType)]) -> Schema {
        let mut fields: Vec<Field> = self.columns.iter().map(|c| Field::new(&c.name, c.ty.arrow(), c.nullable)).collect();
        fields.extend(extra.iter().map(|(n, t)| Field::new(n, t.arrow(), true)));
        let md = HashMap::from([(META_TABLE.to_string(), self.table.clone()), (META_VERSION.to_string(), self.version.to_string())]);
        Schema::new_with_metadata(fields, md)
    }

    /// Checks an Arrow schema (as read from a file) against this one: every
    /// declared column present with its type and nullability, in order, and
    /// nothing else but allowed extra columns.
    pub fn check(&self, schema: &Schema) -> Result<()> {
        let fields = schema.fields();
        if fields.len() < self.columns.len() {
            bail!("{} columns, schema {} v{} declares {}", fields.len(), self.table, self.version, self.columns.len());
        }
        for (def, field) in self.columns.iter().zip(fields.iter()) {
            let ty = ColumnType::from_arrow(field.data_type())
                .ok_or_else(|| anyhow!("column '{}' has unsupported type {}", field.name(), field.data_type()))?;
            if field.name() != &def.name || ty != def.ty || field.is_nullable() != def.nullable {
                bail!(
                    "column '{}' {:?} nullable={} where schema {} v{} declares '{}' {:?} nullable={}",
                    field.name(),
                    ty,
                    field.is_nullable(),
                    self.table,
                    self.version,
                    def.name,
                    def.ty,
                    def.nullable
                );
            }
        }
        for field in &fields[self.columns.len()..] {
            let ok = self.extra_columns.as_ref().is_some_and(|x| {
                x.prefix.iter().chain(&x.prefixes).any(|p| field.name().starts_with(p.as_str()))
                    && ColumnType::from_arrow(field.data_type()).is_some_and(|t| x.types.contains(&t))
                    && field.is_nullable() == x.nullable
            });
            if !ok {
                bail!("column '{}' ({}) is not allowed by schema {} v{}", field.name(), field.data_type(), self.table, self.version);
            }
        }
        let version = schema.metadata().get(META_VERSION);
        if version.map(String::as_str) != Some(&self.version.to_string()) {
            bail!("schema version metadata is {version:?}, expected {}", self.version);
        }
        Ok(())
    }
}
