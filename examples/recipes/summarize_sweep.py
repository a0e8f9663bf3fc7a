"""Per-run summary of a sweep's MLP taps: when each tap leaves the linear
regime, how far it goes, and which tap goes first.

Usage: python3 examples/recipes/summarize_sweep.py SWEEP_DIR [SWEEP_DIR ...] [--axes lr,init_scale,seed]

Each SWEEP_DIR is a trained and analysed sweep (lintrace-train sweep, then
lintrace-analyze with unit_linear_fit, linearized_agreement, performance and
mu); --axes are the config keys shown per run (default lr,init_scale,seed). For
each run and each MLP tap (layer_kind 'mlp' in a transformer, else every
tap), from the analysis tables:

  nl0, nlT     unit_linear_fit nonlinearity at step 0 and at the last step
  nl_at        first step whose nonlinearity is at least 0.05 ('-' if never)
  agr_at       first step whose linearized_agreement is below 0.95 ('-' if
               never): replacing the tap by its affine fit changes more than
               5% of the network's predictions
  agrT         linearized_agreement at the last step
and per run: the probe loss and accuracy at the last step, the largest
mu/I(F;Y) against the run's linear surrogate (over steps with I(F;Y) > 0.05
bits) and its value at the last step, and the taps in the order they cross
each threshold, `order_nl` and `order_agr` (ties share a place: '1<0' = the
deep tap first, '0=1' = at the same checkpoint, taps that never cross last).
"""

import json
import pathlib
import sys

import polars as pl

# The repository's Python package (or an installed lintrace): lintrace.tables needs only polars.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "python"))
from lintrace.tables import run_tables  # noqa: E402

AGREE = 0.95
NONLIN = 0.05


def summarize(sweeps, axes):
    """One row per analysed run of the given sweep folders."""
    rows = []
    runs = [p for sweep in sweeps for p in sorted(pathlib.Path(sweep).iterdir())]
    for run in (p for p in runs if (p / "analysis" / "layer_metrics.parquet").is_file()):
        rows.append(summarize_run(run, axes))
    return pl.DataFrame(rows, strict=False).sort(axes)


def summarize_run(run, axes):
    cfg = json.loads((run / "run.json").read_text()).get("config", {})
    layer, model = run_tables(run)
    mlp = layer.filter(pl.col("layer_kind") == "mlp")
    if mlp.height == 0:
        mlp = layer
    last = layer["step"].max()
    row = axis_values(cfg, axes)
    perf = model.filter(pl.col("analyzer") == "performance", pl.col("step") == last)
    for m in ["loss", "accuracy"]:
        v = perf.filter(pl.col("metric") == m)["value"]
        row[m] = round(v[0], 3) if len(v) else None
    row.update(mu_over_i(model))
    crossed = {"nl": {}, "agr": {}}
    for tap in sorted(mlp["tap"].unique().to_list()):
        t = mlp.filter(pl.col("tap") == tap)
        nl = t.filter(pl.col("analyzer") == "unit_linear_fit", pl.col("metric") == "nonlinearity").sort("step")
        ag = t.filter(pl.col("analyzer") == "linearized_agreement", pl.col("metric") == "agreement").sort("step")
        first = lambda df: df["step"][0] if df.height else None
        crossed["nl"][tap] = first(nl.filter(pl.col("value") >= NONLIN))
        crossed["agr"][tap] = first(ag.filter(pl.col("value") < AGREE))
        row[f"nl0 t{tap}"] = round(nl["value"][0], 3) if nl.height else None
        row[f"nlT t{tap}"] = round(nl["value"][-1], 3) if nl.height else None
        row[f"nl_at t{tap}"] = crossed["nl"][tap] if crossed["nl"][tap] is not None else "-"
        row[f"agr_at t{tap}"] = crossed["agr"][tap] if crossed["agr"][tap] is not None else "-"
        row[f"agrT t{tap}"] = round(ag["value"][-1], 2) if ag.height else None
    for kind, at in crossed.items():
        row[f"order_{kind}"] = order(at)
    return row


def axis_values(cfg, axes):
    """The run's value of each axis key, from its config or its data config."""
    return {a: cfg.get(a, cfg.get("data", {}).get(a)) for a in axes}


def mu_over_i(model):
    """mu/I(F;Y) against the linear surrogate, over the steps with I(F;Y) >
    0.05 bits: the largest and the last ({} without mu rows)."""
    mu = model.filter(pl.col("analyzer") == "mu", pl.col("surrogate") == "linear")
    if mu.height == 0:
        return {}
    w = mu.pivot(on="metric", index="step", values="value", aggregate_function="first").sort("step")
    if "mu" not in w.columns or "i_f_y" not in w.columns:
        return {}
    w = w.with_columns((pl.col("mu") / pl.col("i_f_y")).alias("r")).filter(pl.col("i_f_y") > 0.05)
    return {"mu/I max": round(w["r"].max(), 2) if w.height else None, "mu/I end": round(w["r"][-1], 2) if w.height else None}


def order(at):
    """Taps in the order of their steps in `at` (tap -> step or None):
    '1<0' = tap 1 first, '0=1' = at the same step, taps with None last."""
    groups = {}
    for tap, s in at.items():
        groups.setdefault(s if s is not None else float("inf"), []).append(str(tap))
    return "<".join("=".join(sorted(groups[s])) for s in sorted(groups))


if __name__ == "__main__":
    args = sys.argv[1:]
    axes = ["lr", "init_scale", "seed"]
    if "--axes" in args:
        i = args.index("--axes")
        axes = args[i + 1].split(",")
        del args[i : i + 2]
    pl.Config.set_tbl_rows(200)
    pl.Config.set_tbl_cols(40)
    pl.Config.set_tbl_width_chars(250)
    print(summarize(args, axes))
