"""Final model metrics of the finished runs, averaged per value of a sweep
axis (seeds and other axes pooled).

Usage: python3 examples/queries/final_metrics_by_axis.py SWEEP_DIR [AXIS]"""

import pathlib
import sys

import polars as pl

# The repository's Python package (or an installed lintrace): lintrace.tables needs only polars.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "python"))
from lintrace.tables import load  # noqa: E402

sweep = sys.argv[1]
axis = sys.argv[2] if len(sys.argv) > 2 else "lr"
_, _, runs = load(sweep)
finals = [c for c in runs.columns if c.startswith("final.") and not c.split(".")[-1].startswith("n_")]
long = (
    runs.filter(pl.col("status") == "finished")
    .select(pl.col(f"config.{axis}").alias(axis), *finals)
    .unpivot(index=axis, variable_name="metric")
    .with_columns(pl.col("metric").str.strip_prefix("final."))
)
summary = (
    long.group_by(axis, "metric")
    .agg(pl.len().alias("runs"), pl.col("value").mean().alias("mean"), pl.col("value").std().alias("std"))
    .sort("metric", axis)
    .pivot(on=axis, index="metric", values="mean")
)
pending = runs.filter(pl.col("status") != "finished").height
pl.Config.set_tbl_rows(60)
pl.Config.set_tbl_width_chars(160)
pl.Config.set_fmt_str_lengths(60)
print(f"mean final metric over finished runs, by {axis} (columns)")
print(summary)
print(f"{pending} runs not finished")
