//! `lintrace-query`: polars SQL over lintrace's tables, figures and the HTML
//! report. `lintrace-analyze query|plot|report …` runs this binary, so
//! both spellings work; it is a crate of its own so that training and
//! analysis do not build polars and plotters.

use anyhow::Result;
use clap::Parser;
use lintrace_query::plot::{self, data::Tables, figures};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "lintrace-query", version, about = "SQL over lintrace's tables, figures and the HTML report")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Run polars SQL over the tables of a sweep, runs root or run
    /// (checkpoints, layer_metrics, model_metrics, runs, train_log).
    Query {
        dir: PathBuf,
        sql: String,
        /// Write the result to a .csv or .parquet file instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Query tables computed on different probe batches together.
        #[arg(long)]
        allow_mixed_probes: bool,
    },
    /// Draw a figure to OUT.png and OUT.svg.
    Plot {
        #[command(subcommand)]
        figure: Figure,
    },
    /// Write a self-contained HTML report (figures and tables) for a folder.
    Report {
        dir: PathBuf,
        /// Default: DIR/report.html
        #[arg(long)]
        out: Option<PathBuf>,
        /// Show tables computed on different probe batches together.
        #[arg(long)]
        allow_mixed_probes: bool,
    },
}

/// What every figure takes: the folder, the metric and where to write.
#[derive(clap::Args, Debug)]
struct FigureArgs {
    /// A sweep folder, runs root or run folder.
    dir: PathBuf,
    #[arg(long)]
    metric: String,
    /// Needed when several analyzers write the metric.
    #[arg(long)]
    analyzer: Option<String>,
    /// Output path without extension (OUT.png and OUT.svg are written).
    #[arg(long)]
    out: PathBuf,
    /// Draw tables computed on different probe batches together.
    #[arg(long)]
    allow_mixed_probes: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Figure {
    /// Depth × log-step heatmap of a layer metric for one run.
    Heatmap {
        #[command(flatten)]
        args: FigureArgs,
        /// The run (when DIR holds several).
        #[arg(long)]
        run: Option<String>,
    },
    /// A grid of heatmaps: one panel per run, or per value of a config key.
    Facet {
        #[command(flatten)]
        args: FigureArgs,
        /// Config key to facet by (e.g. lr); runs sharing a value are averaged.
        #[arg(long)]
        by: Option<String>,
    },
    /// A model metric over log steps: one line per run or per value of a config key.
    Lines {
        #[command(flatten)]
        args: FigureArgs,
        /// Only rows against this surrogate (default: a line per surrogate).
        #[arg(long)]
        surrogate: Option<String>,
        /// Config key to group runs by (e.g. lr); runs sharing a value are averaged.
        #[arg(long)]
        by: Option<String>,
    },
}

fn command_main(cmd: &Cmd) -> Result<i32> {
    match cmd {
        Cmd::Query { dir, sql, out, allow_mixed_probes } => {
            let mut df = lintrace_query::query::run(dir, sql, *allow_mixed_probes)?;
            match out {
                Some(path) => {
                    lintrace_query::query::write(&mut df, path)?;
                    println!("wrote {} rows to {}", df.height(), path.display());
                }
                None => {
                    // Show whole results unless the user set polars' own limits.
                    for (k, v) in [("POLARS_FMT_MAX_ROWS", "50"), ("POLARS_FMT_MAX_COLS", "30"), ("POLARS_FMT_STR_LEN", "60")] {
                        if std::env::var_os(k).is_none() {
                            std::env::set_var(k, v);
                        }
                    }
                    println!("{df}");
                }
            }
        }
        Cmd::Plot { figure } => {
            let (png, svg) = match figure {
                Figure::Heatmap { args: a, run } => plot::save(
                    &figures::heatmap(&Tables::load(&a.dir, a.allow_mixed_probes)?, run.as_deref(), &a.metric, a.analyzer.as_deref())?,
                    &a.out,
                )?,
                Figure::Facet { args: a, by } => plot::save(
                    &figures::facet(&Tables::load(&a.dir, a.allow_mixed_probes)?, &a.metric, a.analyzer.as_deref(), by.as_deref())?,
                    &a.out,
                )?,
                Figure::Lines { args: a, surrogate, by } => plot::save(
                    &figures::lines(
                        &Tables::load(&a.dir, a.allow_mixed_probes)?,
                        &a.metric,
                        a.analyzer.as_deref(),
                        surrogate.as_deref(),
                        by.as_deref(),
                    )?,
                    &a.out,
                )?,
            };
            println!("wrote {} and {}", png.display(), svg.display());
        }
        Cmd::Report { dir, out, allow_mixed_probes } => {
            let out = out.clone().unwrap_or_else(|| dir.join("report.html"));
            let n = lintrace_query::report::write(dir, &out, *allow_mixed_probes)?;
            println!("wrote {} ({n} figures)", out.display());
        }
    }
    Ok(0)
}

fn main() {
    lintrace_core::sigpipe::exit_quietly_on_closed_pipe();
    let args = Args::parse();
    if std::env::var_os("LINTRACE_PARSE_ONLY").is_some() {
        return; // the command line parsed; nothing is run (tests/it/docs/doc_commands.rs)
    }
    match command_main(&args.command) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
