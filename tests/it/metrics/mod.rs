//! Every metric against an independent numpy implementation, directly and through the tables.

mod golden;
mod golden_suite;
mod golden_tables;
