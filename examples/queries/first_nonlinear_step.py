"""At which step does each tap's nonlinearity first exceed a threshold, per
value of a sweep axis (default: lr)?

Usage: python3 examples/queries/first_nonlinear_step.py SWEEP_DIR [AXIS] [THRESHOLD]

Pinson et al. see layers leave the linear regime from deep to shallow; here
that shows as the first-crossing step falling with the tap index. Taps that
never cross are null. Several runs per axis value (seeds) are averaged
before the threshold is applied."""

import pathlib
import sys

import polars as pl

# The repository's Python package (or an installed lintrace): lintrace.tables needs only polars.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "python"))
from lintrace.tables import load  # noqa: E402

sweep = sys.argv[1]
axis = sys.argv[2] if len(sys.argv) > 2 else "lr"
threshold = float(sys.argv[3]) if len(sys.argv) > 3 else 0.5

layer, _, runs = load(sweep)
curve = (
    layer.filter(pl.col("analyzer") == "unit_linear_fit", pl.col("metric") == "nonlinearity")
    .join(runs.select("run_id", pl.col(f"config.{axis}").alias(axis)), on="run_id")
    .group_by(axis, "tap", "step")
    .agg(pl.col("value").mean())
)
first = (
    curve.filter(pl.col("value") > threshold)
    .group_by(axis, "tap")
    .agg(pl.col("step").min().alias("first_step"))
)
table = (
    curve.select(axis, "tap").unique()
    .join(first, on=[axis, "tap"], how="left")
    .sort(axis, "tap")
    .pivot(on="tap", index=axis, values="first_step")
)
pl.Config.set_tbl_cols(30)
print(f"first step with mean nonlinearity > {threshold}, by {axis} (columns: taps, shallow to deep)")
print(table)
