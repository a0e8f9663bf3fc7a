"""Reads every lintrace table under a runs root with Python polars and checks
each column's dtype and nullability against schemas/*.json; then runs the
README's cross-run join. Usage: check_tables.py RUNS_ROOT"""

import json
import pathlib
import sys

import polars as pl

REPO = pathlib.Path(__file__).resolve().parents[2]
DTYPES = {"string": pl.String, "int32": pl.Int32, "int64": pl.Int64, "float64": pl.Float64, "bool": pl.Boolean}


def schema(table):
    files = sorted(REPO.glob(f"schemas/{table}.v*.json"), key=lambda p: int(p.stem.split(".v")[1]))
    return json.loads(files[-1].read_text())


def check(path, table):
    df = pl.read_parquet(path)
    s = schema(table)
    declared = s["columns"]
    assert df.columns[: len(declared)] == [c["name"] for c in declared], (path, df.columns)
    for c in declared:
        assert df.schema[c["name"]] == DTYPES[c["type"]], (path, c["name"], df.schema[c["name"]], c["type"])
        if not c["nullable"]:
            assert df[c["name"]].null_count() == 0, (path, c["name"], "has nulls")
    extra = df.columns[len(declared):]
    if extra:
        x = s["extra_columns"]
        assert x is not None, (path, "unexpected columns", extra)
        allowed = {DTYPES[t] for t in x["types"]}
        for name in extra:
            prefixes = x.get("prefixes") or [x["prefix"]]
            assert any(name.startswith(p) for p in prefixes), (path, name)
            assert df.schema[name] in allowed, (path, name, df.schema[name])
    # Floats are never NaN: undefined values are null.
    for name, dt in df.schema.items():
        if dt == pl.Float64:
            assert df[name].is_nan().sum() == 0, (path, name, "has NaN")
    return df


def main(root):
    root = pathlib.Path(root)
    counts = {}
    for table, pattern in [
        ("layer_metrics", "*/analysis/layer_metrics.parquet"),
        ("model_metrics", "*/analysis/model_metrics.parquet"),
        ("runs", "*/analysis/runs.parquet"),
        ("train_log", "*/train_log.parquet"),
    ]:
        files = sorted(root.glob(pattern))
        assert files, f"no {table} tables under {root}"
        for f in files:
            df = check(f, table)
            counts[table] = counts.get(table, 0) + df.height
    # The README's query: every run's layer metrics joined with its config.
    layers = pl.scan_parquet(str(root / "*/analysis/layer_metrics.parquet"))
    runs = pl.concat([pl.scan_parquet(p) for p in sorted(root.glob("*/analysis/runs.parquet"))], how="diagonal_relaxed")
    joined = (
        layers.join(runs, on="run_id")
        .filter(pl.col("metric") == "nonlinearity")
        .group_by("run_id", "config.lr", "tap")
        .agg(pl.col("value").last())
        .collect()
    )
    assert joined.height > 0, "join produced no rows"
    print(json.dumps({"rows": counts, "joined": joined.height}))


if __name__ == "__main__":
    main(sys.argv[1])
