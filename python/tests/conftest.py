import os
import subprocess
from pathlib import Path

import pytest
import torch

# Tiny models on a 2-core machine: more threads only contend (5 s instead of 27 s here).
torch.set_num_threads(1)

PYTHON_DIR = Path(__file__).resolve().parents[1]
REPO = PYTHON_DIR.parent
BUILD = "cargo build --locked --bin lintrace-train --bin lintrace-analyze"


def bin_dir() -> Path:
    d = Path(os.environ.get("LINTRACE_BIN_DIR", REPO / "target" / "debug"))
    return d if d.is_absolute() else REPO / d


def binary(name: str) -> Path:
    p = bin_dir() / name
    if not p.is_file():
        pytest.skip(f"{p} not found: build it with `{BUILD}` in {REPO}, or set LINTRACE_BIN_DIR")
    return p


def analyze(path, *flags, cwd=None):
    """Runs lintrace-analyze; asserts exit code 0 and no failed run."""
    r = subprocess.run([str(binary("lintrace-analyze")), str(path), "-q", "--device", "cpu", *map(str, flags)],
                       capture_output=True, text=True, cwd=cwd, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "; 0 failed" in out, out
    return out


def steps_in(folder: Path):
    return sorted(int(p.name[len("step_"):-len(".safetensors")]) for p in folder.glob("step_*.safetensors"))


def analysed_steps(table: Path):
    import polars as pl

    df = pl.read_parquet(table)
    assert df.height > 0
    return sorted(df["step"].unique().to_list())


@pytest.fixture
def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(PYTHON_DIR) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.setdefault("TOKENIZERS_PARALLELISM", "false")
    e.setdefault("OMP_NUM_THREADS", "1")
    return e
