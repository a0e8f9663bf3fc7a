//! Tidy Parquet tables. A [`Table`] is rows of [`Value`]s under a schema
//! from `schemas/`; it is written atomically with its schema version in the
//! file metadata, and read back for incremental merges.

pub mod flatten;
pub mod schema;

pub use schema::{current as schema_for, ColumnType, TableSchema};

use crate::atomic::write_atomic;
use anyhow::{anyhow, bail, Context, Result};
use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    I32(i32),
    I64(i64),
    F64(f64),
    Bool(bool),
    Null,
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::I64(v) => Some(*v),
            Value::I32(v) => Some(*v as i64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F64(v) => Some(*v),
            _ => None,
        }
    }
    /// The value as plain text (null as "null"), e.g. to group or label by it.
    pub fn to_text(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::I32(x) => x.to_string(),
            Value::I64(x) => x.to_string(),
            Value::F64(x) => x.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => "null".into(),
        }
    }

    pub fn opt_f64(v: Option<f64>) -> Value {
        match v {
            Some(x) if x.is_finite() => Value::F64(x),
            _ => Value::Null,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Table {
    pub schema: TableSchema,
    /// Extra (prefixed) columns after the declared ones.
    pub extra: Vec<(String, ColumnType)>,
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    pub fn new(table: &str) -> Self {
        Table { schema: schema_for(table), extra: Vec::new(), rows: Vec::new() }
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.schema.columns.iter().map(|c| c.name.as_str()).chain(self.extra.iter().map(|(n, _)| n.as_str())).position(|n| n == name)
    }

    fn width(&self) -> usize {
        self.schema.columns.len() + self.extra.len()
    }

    pub fn push(&mut self, row: Vec<Value>) {
        assert_eq!(row.len(), self.width(), "row width does not match table '{}'", self.schema.table);
        self.rows.push(row);
    }

    fn to_batch(&self) -> Result<RecordBatch> {
        let schema = Arc::new(self.schema.arrow(&self.extra));
        let types: Vec<ColumnType> = self.schema.columns.iter().map(|c| c.ty).chain(self.extra.iter().map(|(_, t)| *t)).collect();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for (j, ty) in types.iter().enumerate() {
            let col = self.rows.iter().map(|r| &r[j]);
            let bad = |v: &Value| anyhow!("table {}: column {j} expects {ty:?}, got {v:?}", self.schema.table);
            let array: ArrayRef = match ty {
                ColumnType::String => Arc::new(
                    col.map(|v| match v {
                        Value::Str(s) => Ok(Some(s.clone())),
                        Value::Null => Ok(None),
                        v => Err(bad(v)),
                    })
                    .collect::<Result<StringArray>>()?,
                ),
                ColumnType::Int32 => Arc::new(
                    col.map(|v| match v {
                        Value::I32(x) => Ok(Some(*x)),
                        Value::Null => Ok(None),
                        v => Err(bad(v)),
                    })
                    .collect::<Result<Int32Array>>()?,
                ),
                ColumnType::Int64 => Arc::new(
                    col.map(|v| match v {
                        Value::I64(x) => Ok(Some(*x)),
                        Value::Null => Ok(None),
                        v => Err(bad(v)),
                    })
                    .collect::<Result<Int64Array>>()?,
                ),
                ColumnType::Float64 => Arc::new(
                    col.map(|v| match v {
                        Value::F64(x) if x.is_finite() => Ok(Some(*x)),
                        Value::F64(_) | Value::Null => Ok(None),
                        v => Err(bad(v)),
                    })
                    .collect::<Result<Float64Array>>()?,
                ),
                ColumnType::Bool => Arc::new(
                    col.map(|v| match v {
                        Value::Bool(x) => Ok(Some(*x)),
                        Value::Null => Ok(None),
                        v => Err(bad(v)),
                    })
                    .collect::<Result<BooleanArray>>()?,
                ),
            };
            arrays.push(array);
        }
        Ok(RecordBatch::try_new(schema, arrays)?)
    }

    /// Writes the table as one Parquet file, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let batch = self.to_batch().with_context(|| format!("{}", path.display()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_key_value_metadata(Some(vec![
                KeyValue::new(schema::META_TABLE.to_string(), self.schema.table.clone()),
                KeyValue::new(schema::META_VERSION.to_string(), self.schema.version.to_string()),
            ]))
            .build();
        let mut buf = Vec::new();
        {
            let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
            w.write(&batch)?;
            w.close()?;
        }
        write_atomic(path, &buf)
    }

    /// Reads a table written by [`Table::write`], checking it against the
    /// schema version it declares; files of an older version are upgraded to
    /// the current one (new columns are null).
    pub fn read(path: &Path, table: &str) -> Result<Table> {
        Self::read_inner(path, table).with_context(|| format!("{}", path.display()))
    }

    fn read_inner(path: &Path, table: &str) -> Result<Table> {
        let file = std::fs::File::open(path).context("cannot open")?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).context("not a readable Parquet file")?;
        let arrow_schema = builder.schema().clone();
        let declared: u32 = arrow_schema
            .metadata()
            .get(schema::META_VERSION)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no {} metadata: not a lintrace table", schema::META_VERSION))?;
        let file_schema =
            schema::version(table, declared).ok_or_else(|| anyhow!("{table} schema version {declared} is unknown to this lintrace"))?;
        file_schema.check(&arrow_schema)?;
        let current = schema_for(table);
        let names: Vec<String> = arrow_schema.fields().iter().map(|f| f.name().clone()).collect();
        let extra: Vec<(String, ColumnType)> = arrow_schema.fields()[file_schema.columns.len()..]
            .iter()
            .map(|f| (f.name().clone(), ColumnType::from_arrow(f.data_type()).expect("checked above")))
            .collect();
        // Where each current column comes from in the file (None: added since,
        // so an older file is upgraded with nulls).
        let source: Vec<Option<usize>> = current
            .columns
            .iter()
            .map(|c| names.iter().position(|n| *n == c.name))
            .chain((0..extra.len()).map(|i| Some(file_schema.columns.len() + i)))
            .collect();
        let mut out = Table { schema: current, extra, rows: Vec::new() };
        for batch in builder.build()? {
            let batch = batch?;
            let cols = batch.columns();
            for i in 0..batch.num_rows() {
                let row = source.iter().map(|s| match s {
                    Some(j) => cell(cols[*j].as_ref(), i),
                    None => Ok(Value::Null),
                });
                out.rows.push(row.collect::<Result<_>>()?);
            }
        }
        Ok(out)
    }
}

fn cell(col: &dyn Array, i: usize) -> Result<Value> {
    if col.is_null(i) {
        return Ok(Value::Null);
    }
    let any = col.as_any();
    Ok(match col.data_type() {
        DataType::Utf8 => Value::Str(any.downcast_ref::<StringArray>().expect("utf8").value(i).to_string()),
        DataType::Int32 => Value::I32(any.downcast_ref::<Int32Array>().expect("i32").value(i)),
        DataType::Int64 => Value::I64(any.downcast_ref::<Int64Array>().expect("i64").value(i)),
        DataType::Float64 => Value::F64(any.downcast_ref::<Float64Array>().expect("f64").value(i)),
        DataType::Boolean => Value::Bool(any.downcast_ref::<BooleanArray>().expect("bool").value(i)),
        other => bail!("unsupported column type {other}"),
    })
}
