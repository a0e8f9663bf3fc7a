"""Final model metrics of every run, averaged per value of a sweep axis, with
the spread across seeds.

Usage: python3 examples/queries/final_metrics_by_axis.py SWEEP_DIR [AXIS]"""

import sys

import polars as pl
from _tables import load

sweep = sys.argv[1]
axis = sys.argv[2] if len(sys.argv) > 2 else "lr"
_, _, runs = load(sweep)
finals = [c for c in runs.columns if c.startswith("final.") and not c.split(".")[-1].startswith("n_")]
summary = (
    runs.filter(pl.col("status") == "finished")
    .group_by(pl.col(f"config.{axis}").alias(axis))
    .agg(pl.len().alias("runs"), *[pl.col(c).mean().alias(c.removeprefix("final.")) for c in finals])
    .sort(axis)
)
pending = runs.filter(pl.col("status") != "finished").height
pl.Config.set_tbl_cols(30)
print(summary)
print(f"{pending} runs not finished")
