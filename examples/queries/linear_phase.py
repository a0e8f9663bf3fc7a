"""How long does each run stay in the linear phase? Per run: the last step at
which the network still agrees with its linearised-prefix model on at least
a fraction of the probe (default 0.9), from linearized_agreement's
prefix_agreement at the deepest prefix, and the accuracy reached by then.

Usage: python3 examples/queries/linear_phase.py SWEEP_DIR [AGREEMENT]"""

import pathlib
import sys

import polars as pl

# The repository's Python package (or an installed lintrace): lintrace.tables needs only polars.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "python"))
from lintrace.tables import load  # noqa: E402

sweep = sys.argv[1]
level = float(sys.argv[2]) if len(sys.argv) > 2 else 0.9
layer, model, runs = load(sweep)
deepest = (
    layer.filter(pl.col("analyzer") == "linearized_agreement", pl.col("metric") == "prefix_agreement")
    .filter(pl.col("tap") == pl.col("tap").max().over("run_id"))
)
if deepest.height == 0:
    print("no linearized_agreement rows: analyse with --analyzers linearized_agreement,performance")
    sys.exit(0)
last_linear = deepest.filter(pl.col("value") >= level).group_by("run_id").agg(pl.col("step").max().alias("last_linear_step"))
acc = model.filter(pl.col("analyzer") == "performance", pl.col("metric") == "accuracy").select("run_id", "step", pl.col("value").alias("accuracy"))
out = (
    last_linear.join(acc, left_on=["run_id", "last_linear_step"], right_on=["run_id", "step"], how="left")
    .join(runs.select("run_id", *[c for c in runs.columns if c in ("config.lr", "config.seed", "config.activation")]), on="run_id")
    .sort("run_id")
)
print(f"last step with prefix agreement >= {level}")
print(out)
