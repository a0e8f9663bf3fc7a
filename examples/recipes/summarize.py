"""Prints the seed-experiment tables for one analysed run.
Usage: python3 examples/recipes/summarize.py RUN_DIR"""

import pathlib
import sys

import polars as pl

# The repository's Python package (or an installed lintrace): lintrace.tables needs only polars.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "python"))
from lintrace.tables import run_tables  # noqa: E402

pl.Config.set_tbl_rows(100)
pl.Config.set_tbl_cols(20)
pl.Config.set_float_precision(3)
pl.Config.set_tbl_width_chars(200)

run = sys.argv[1]
layer, model = run_tables(run)


def wide(df, index, on, value="value"):
    return df.pivot(on=on, index=index, values=value).sort(index)


print("## Kalimeris et al.: F_t against the linear surrogate L (held-out split)")
mu = model.filter(pl.col("analyzer") == "mu")
lin = wide(mu.filter(pl.col("surrogate") == "linear"), "step", "metric")
lin = lin.with_columns((pl.col("mu") / pl.col("i_f_y")).alias("mu_over_i_f_y"))
print(lin.select("step", "network_accuracy", "surrogate_accuracy", "i_f_y", "mu", "mu_over_i_f_y", "agreement"))

print("\n## Pinson et al.: mu(F_t; S_k) for partly linear surrogates S_k (taps 0..k linear)")
others = mu.filter(pl.col("surrogate") != "linear", pl.col("metric").is_in(["mu", "surrogate_accuracy"]))
if others.height:
    print(wide(others.filter(pl.col("metric") == "mu"), "step", "surrogate"))
    print(others.filter(pl.col("metric") == "surrogate_accuracy").group_by("surrogate").agg(pl.col("value").first().alias("S_k test accuracy")).sort("surrogate"))

print("\n## Post-hoc: prefix agreement (taps 0..k replaced by affine surrogates), and linear_prefix_depth")
pref = layer.filter(pl.col("metric") == "prefix_agreement")
depth = model.filter(pl.col("metric") == "linear_prefix_depth").select("step", pl.col("value").alias("linear_prefix_depth"))
print(wide(pref, "step", "tap").join(depth, on="step"))

print("\n## unit_linear_fit nonlinearity per tap (0 = shallow)")
print(wide(layer.filter(pl.col("analyzer") == "unit_linear_fit", pl.col("metric") == "nonlinearity"), "step", "tap"))
print("\n## single-tap agreement when only tap l is linearised")
print(wide(layer.filter(pl.col("metric") == "agreement"), "step", "tap"))
