//! The commands the documentation shows.

mod doc_commands;
mod module_graph;
