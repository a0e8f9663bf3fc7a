"""The core package: no framework imports, file formats, existing folders."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from torch import nn

import lintrace
from conftest import PYTHON_DIR


def test_core_imports_no_framework():
    code = "import sys, lintrace; bad = [m for m in ('transformers', 'lightning', 'pytorch_lightning') if m in sys.modules]; sys.exit(repr(bad) if bad else 0)"
    r = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(PYTHON_DIR), "PATH": ""}, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _probe():
    x = torch.randn(10, 6)
    return x, x[:, :3].argmax(1)


def test_formats(tmp_path):
    x, y = _probe()
    ckpt = lintrace.LogSpacedCheckpoints(_model(), tmp_path / "r", probe=(x, y), total_steps=3, run_id="rid")
    for s in range(4):
        ckpt.step(s, epoch=s / 3, samples_seen=10 * s)
    ckpt.finish()
    with safe_open(str(tmp_path / "r" / "probe.safetensors"), "pt") as f:
        md = f.metadata()
        assert md["format"] == "lintrace.probe" and md["hash"] == lintrace.probe_hash(x, y)
        assert f.get_tensor("inputs").dtype == torch.float32 and f.get_tensor("labels").dtype == torch.int64
    # The hash as src/probe.rs computes it: sha256 over f32 LE inputs then i64 LE labels.
    import hashlib
    import struct

    h = hashlib.sha256(struct.pack(f"<{x.numel()}f", *x.flatten().tolist()) + struct.pack(f"<{y.numel()}q", *y.tolist()))
    assert md["hash"] == h.hexdigest()[:16]
    with safe_open(str(tmp_path / "r" / "checkpoints" / "step_00000002.safetensors"), "pt") as f:
        md = f.metadata()
        assert set(f.keys()) == {"layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"}
    assert md["format"] == "lintrace.checkpoint" and md["format_version"] == "1"
    assert (md["run_id"], md["step"], float(md["epoch"]), md["samples_seen"]) == ("rid", "2", 2 / 3, "20")
    assert json.loads(md["spec"])["hidden"] == [5]
    assert json.loads(md["torch_names"])["layers.0.weight"] == "0.weight"
    m = json.loads((tmp_path / "r" / "run.json").read_text())
    assert m["status"] == "finished" and m["checkpoint_steps"] == [0, 1, 2, 3] and m["config"]["dataset"] == "external"
    assert not list((tmp_path / "r" / "checkpoints").glob(".*"))  # no temporary files left


def test_existing_folder(tmp_path):
    x, y = _probe()
    run = tmp_path / "r"
    c = lintrace.LogSpacedCheckpoints(_model(), run, probe=(x, y), total_steps=10)
    c.step(0)
    c.step(1)
    with pytest.raises(FileExistsError):
        lintrace.LogSpacedCheckpoints(_model(), run, probe=(x, y), total_steps=10)
    r = lintrace.LogSpacedCheckpoints(_model(), run, probe=(x, y), total_steps=10, existing="resume")
    assert sorted(r.saved) == [0, 1] and not r.step(1) and r.step(2)
    with pytest.raises(ValueError, match="another probe"):
        lintrace.LogSpacedCheckpoints(_model(), run, probe=(x + 1, y), total_steps=10, existing="resume")
    o = lintrace.LogSpacedCheckpoints(_model(), run, probe=(x + 1, y), total_steps=10, existing="overwrite")
    assert not list((run / "checkpoints").glob("step_*")) and o.saved == {}


def test_unknown_total_saves_the_final_step_at_finish(tmp_path):
    x, y = _probe()
    c = lintrace.LogSpacedCheckpoints(_model(), tmp_path / "r", probe=(x, y))
    saved = [s for s in range(0, 12) if c.step(s)]
    c.finish(11)
    assert saved == [0, 1, 2, 3, 4, 6, 7, 10]
    assert json.loads((tmp_path / "r" / "run.json").read_text())["checkpoint_steps"] == [0, 1, 2, 3, 4, 6, 7, 10, 11]


def test_schedule_and_tables_without_torch():
    # sys.modules[...] = None makes `import torch` fail as if it were not installed.
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['safetensors'] = None\n"
        "import lintrace, lintrace.tables\n"
        "assert lintrace.log_spaced_steps(10)[:3] == [0, 1, 2]\n"
        "try:\n    lintrace.LogSpacedCheckpoints\nexcept ModuleNotFoundError as e:\n"
        "    assert \"pip install 'lintrace[torch]'\" in str(e), e\nelse:\n    raise SystemExit('no error without torch')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(PYTHON_DIR), "PATH": ""}, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_tables_load_a_sweep_and_a_run():
    from lintrace.tables import load, run_tables

    grid = PYTHON_DIR.parent / "fixtures" / "tables" / "grid"
    layer, model, runs = load(grid)
    assert layer["run_id"].n_unique() == 4 and model["run_id"].n_unique() == 4 and runs.height == 4
    one = sorted(grid.glob("grid__*"))[0]
    l1, m1 = run_tables(one)
    assert l1["run_id"].unique().to_list() == [one.name] and m1.height > 0
    assert load(one)[0].height == l1.height
    with pytest.raises(FileNotFoundError, match="no analysed runs"):
        load(PYTHON_DIR)
