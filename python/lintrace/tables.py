"""lintrace's tables with polars: every run's analysis tables under a
folder, stacked, and the runs table.

    from lintrace.tables import load
    layer, model, runs = load("sweeps/lr-seed")   # a sweep, a runs root, a run folder

Runs analysed by different lintrace versions may have tables of different
schema versions; they are stacked with polars' ``diagonal_relaxed``
concatenation (columns a version lacks are null). Needs only polars (not
torch). The column reference is docs/analysis.md; the schemas are
schemas/*.json."""

from pathlib import Path
from typing import List, Tuple, Union

__all__ = ["load", "run_tables", "analysis_folders"]


def analysis_folders(folder: Union[str, Path]) -> List[Path]:
    """The analysis folders under ``folder``: its own (a run folder, or a
    Hugging Face series' ``analysis/`` and its per-stage subfolders), or
    those of every run below it (a sweep, a runs root), sorted."""
    d = Path(folder)
    if (d / "layer_metrics.parquet").is_file():
        own = [d]
    else:
        own = [d / "analysis"] if (d / "analysis" / "layer_metrics.parquet").is_file() else []
    found = {p.parent for p in d.glob("**/analysis/**/layer_metrics.parquet")} | {p.parent for p in d.glob("**/analysis/layer_metrics.parquet")}
    return sorted(set(own) | found)


def _stack(files):
    import polars as pl

    frames = [pl.read_parquet(p) for p in files]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def run_tables(run_dir: Union[str, Path]):
    """(layer_metrics, model_metrics) of one run folder (or analysis folder)."""
    d = Path(run_dir)
    a = d if (d / "layer_metrics.parquet").is_file() else d / "analysis"
    missing = [n for n in ("layer_metrics", "model_metrics") if not (a / f"{n}.parquet").is_file()]
    if missing:
        raise FileNotFoundError(f"{a}: no {', '.join(missing)}.parquet (run lintrace-analyze {d} first)")
    return _stack([a / "layer_metrics.parquet"]), _stack([a / "model_metrics.parquet"])


def load(folder: Union[str, Path]) -> Tuple["object", "object", "object"]:
    """(layer_metrics, model_metrics, runs) of every run under ``folder``,
    stacked. ``runs`` is the sweep's ``runs.parquet`` where
    ``lintrace-analyze`` wrote one, else every run's own."""
    d = Path(folder)
    found = analysis_folders(d)
    if not found:
        raise FileNotFoundError(f"{d}: no analysed runs (no analysis/layer_metrics.parquet below it)")
    layer = _stack([a / "layer_metrics.parquet" for a in found])
    model = _stack([a / "model_metrics.parquet" for a in found if (a / "model_metrics.parquet").is_file()])
    runs_file = d / "runs.parquet"
    runs = _stack([runs_file] if runs_file.is_file() else [a / "runs.parquet" for a in found if (a / "runs.parquet").is_file()])
    return layer, model, runs
