//! lintrace-query: the read side of lintrace's tables. SQL over a sweep's,
//! runs root's or run's Parquet tables (`query`), figures drawn from them
//! (`plot`) and a self-contained HTML report (`report`). It only reads what
//! `lintrace-analyze` wrote, so the data path stays one-way; it lives in a
//! crate of its own so that training and analysis do not build polars and
//! plotters.

pub mod plot;
pub mod query;
pub mod report;
