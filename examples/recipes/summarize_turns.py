"""When does each tap of a sweep's runs turn back from linear, and how far
does it go? For networks that are not linear at initialisation (a
Kaiming-initialised ReLU MLP's units switch on about half the probe, a
per-unit nonlinearity near 0.27 at most), a fixed threshold on the level says
little; the shape of the trajectory does.

Usage: python3 examples/recipes/summarize_turns.py SWEEP_DIR [SWEEP_DIR ...] [--axes dataset,seed] [--group dataset] [--rise 0.02] [--csv]

Each SWEEP_DIR is a trained sweep analysed with unit_linear_fit,
linearized_agreement, performance and mu. Per run and tap, from
unit_linear_fit's nonlinearity:

  nl0, min, end  at step 0, its smallest value, at the last step
  min_at         the step of that minimum: where the tap is most linear
  rise_at        the first step after min_at at which the nonlinearity is
                 at least `--rise` (default 0.02) above the minimum ('-' if
                 never): the tap leaves its linear phase
  agr_end        linearized_agreement at the last step

and per run: accuracy of F and of the linear surrogate L at the last step,
mu/I(F;Y) against L (largest over steps with I(F;Y) > 0.05 bits, and at the
last step), and `order_rise`, the taps in the order they leave the linear
phase ('1<2': tap 1 first, '1=2': at the same checkpoint; taps that never
rise last). With --group, the numeric columns are averaged over the runs of
each group (rise_at as a median over the runs that rise, with their count)
and the orders are listed. --csv prints CSV instead of a table (deep
networks have many columns).
"""

import json
import pathlib
import statistics
import sys

import polars as pl

# The repository's Python package (or an installed lintrace): lintrace.tables needs only polars.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "python"))
from lintrace.tables import run_tables  # noqa: E402

from summarize_sweep import axis_values, mu_over_i, order


def run_rows(run, axes, rise):
    """One summary row for an analysed run."""
    cfg = json.loads((run / "run.json").read_text()).get("config", {})
    layer, model = run_tables(run)
    last = layer["step"].max()
    row = axis_values(cfg, axes)
    at_last = model.filter(pl.col("step") == last)
    for name, analyzer, metric in [("acc F", "performance", "accuracy"), ("acc L", "mu", "surrogate_accuracy")]:
        v = at_last.filter(pl.col("analyzer") == analyzer, pl.col("metric") == metric)["value"]
        row[name] = round(v[0], 3) if len(v) else None
    row.update(mu_over_i(model))
    rises = {}
    for tap in sorted(layer["tap"].drop_nulls().unique().to_list()):
        t = layer.filter(pl.col("tap") == tap)
        nl = t.filter(pl.col("analyzer") == "unit_linear_fit", pl.col("metric") == "nonlinearity").sort("step")
        ag = t.filter(pl.col("analyzer") == "linearized_agreement", pl.col("metric") == "agreement").sort("step")
        if nl.height == 0:
            continue
        i_min = nl["value"].arg_min()
        lo, lo_step = nl["value"][i_min], nl["step"][i_min]
        after = nl.filter(pl.col("step") > lo_step, pl.col("value") >= lo + rise)
        rises[tap] = after["step"][0] if after.height else None
        row[f"nl0 t{tap}"] = round(nl["value"][0], 3)
        row[f"min t{tap}"] = round(lo, 3)
        row[f"min_at t{tap}"] = lo_step
        row[f"rise_at t{tap}"] = rises[tap]
        row[f"end t{tap}"] = round(nl["value"][-1], 3)
        row[f"agr_end t{tap}"] = round(ag["value"][-1], 3) if ag.height else None
    row["order_rise"] = order(rises)
    return row


def grouped(df, by):
    """Means over the runs of each group; rise steps as medians of the runs that rise."""
    out = []
    for key, g in df.group_by(by, maintain_order=True):
        row = dict(zip(by, key))
        row["runs"] = g.height
        for c in df.columns:
            if c in by or c in ("seed", "order_rise"):
                continue
            if c.startswith("rise_at"):
                v = [x for x in g[c].to_list() if x is not None]
                row[c] = f"{statistics.median(v):g} ({len(v)}/{g.height})" if v else f"- (0/{g.height})"
            elif g[c].dtype.is_numeric():
                m = g[c].mean()
                row[c] = None if m is None else round(m, 3) if not c.startswith("min_at") else f"{statistics.median(g[c].to_list()):g}"
        row["order_rise"] = ", ".join(g["order_rise"].to_list())
        out.append(row)
    return pl.DataFrame(out, strict=False)


def main(args):
    axes, by, rise = ["dataset", "seed"], None, 0.02
    csv = "--csv" in args
    args = [a for a in args if a != "--csv"]
    for flag in ("--axes", "--group", "--rise"):
        if flag in args:
            i = args.index(flag)
            value = args[i + 1]
            del args[i : i + 2]
            if flag == "--axes":
                axes = value.split(",")
            elif flag == "--group":
                by = value.split(",")
            else:
                rise = float(value)
    runs = [p for sweep in args for p in sorted(pathlib.Path(sweep).iterdir())]
    rows = [run_rows(r, axes, rise) for r in runs if (r / "analysis" / "layer_metrics.parquet").is_file()]
    if not rows:
        sys.exit("no analysed runs under " + " ".join(args))
    df = pl.DataFrame(rows, strict=False).sort(axes)
    out = grouped(df, by) if by else df
    if csv:
        print(out.write_csv(), end="")
        return
    pl.Config.set_tbl_rows(200)
    pl.Config.set_tbl_cols(60)
    pl.Config.set_tbl_width_chars(400)
    print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
