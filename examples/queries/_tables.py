"""Loads a sweep's tables with polars: every run's layer and model metrics
(stacked; older schema versions get null columns) and the sweep's runs table.
Shared by the query examples; see docs/sweeps-and-queries.md."""

import pathlib

import polars as pl


def load(sweep_dir):
    d = pathlib.Path(sweep_dir)
    layer = pl.concat([pl.read_parquet(p) for p in sorted(d.glob("*/analysis/layer_metrics.parquet"))], how="diagonal_relaxed")
    model = pl.concat([pl.read_parquet(p) for p in sorted(d.glob("*/analysis/model_metrics.parquet"))], how="diagonal_relaxed")
    runs_file = d / "runs.parquet"
    if runs_file.exists():
        runs = pl.read_parquet(runs_file)
    else:
        runs = pl.concat([pl.read_parquet(p) for p in sorted(d.glob("*/analysis/runs.parquet"))], how="diagonal_relaxed")
    return layer, model, runs
