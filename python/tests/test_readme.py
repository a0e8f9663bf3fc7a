"""Runs python/README.md's examples verbatim, then lintrace-analyze on the
folders they wrote."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lintrace
from conftest import PYTHON_DIR, analyze, analysed_steps, binary, steps_in


def example(marker: str) -> str:
    text = (PYTHON_DIR / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    found = [b for b in blocks if b.startswith(f"# example: {marker}\n")]
    assert len(found) == 1, f"README.md: no single block starting '# example: {marker}'"
    return found[0]


def run_example(marker, tmp_path, env):
    binary("lintrace-analyze")  # skip early, before training, when it is missing
    script = tmp_path / f"example_{marker.replace(' ', '_')}.py"  # not lightning.py: it would shadow the package
    script.write_text(example(marker))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return tmp_path


def check_run(run: Path, total: int):
    expected = lintrace.log_spaced_steps(total)
    assert steps_in(run / "checkpoints") == expected
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["checkpoint_steps"] == expected
    assert sorted(int(s) for s in manifest["checkpoint_sha256"]) == expected
    analyze(run)
    assert analysed_steps(run / "analysis" / "layer_metrics.parquet") == expected
    return expected


def test_plain_loop(tmp_path, env):
    root = run_example("plain loop", tmp_path, env)
    run = root / "runs" / "plain"
    check_run(run, 200)
    # The files load back into the model under its own names.
    from torch import nn

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    model.load_state_dict(lintrace.load_state_dict(run / "checkpoints" / lintrace.checkpoint_name(200)))
    # lintrace's performance rows agree with the model's own accuracy on the probe.
    import polars as pl
    from safetensors.torch import load_file

    probe = load_file(str(run / "probe.safetensors"))
    acc = (model(probe["inputs"]).argmax(1) == probe["labels"]).float().mean().item()
    mm = pl.read_parquet(run / "analysis" / "model_metrics.parquet")
    rows = mm.filter((pl.col("step") == 200) & pl.col("metric").str.contains("acc"))
    assert rows.height > 0, mm["metric"].unique().to_list()
    assert any(abs(v - acc) < 1e-6 for v in rows["value"].to_list()), (acc, rows)


def test_trainer(tmp_path, env):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    root = run_example("trainer", tmp_path, env)
    run = root / "runs" / "trainer"
    expected = check_run(run, 60)
    config = json.loads((run / "run.json").read_text())["config"]
    assert (config["optimizer"], config["lr"], config["batch_size"]) == ("adamw", 0.05, 32)  # from TrainingArguments
    # The Trainer's own checkpoint-N/ folders: at exactly the log-spaced steps (it never saves step 0).
    trainer_steps = sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))
    assert trainer_steps == [s for s in expected if s > 0]
    # Its weights are lintrace's at the same step.
    from safetensors.torch import load_file

    hf = load_file(str(run / "checkpoint-60" / "model.safetensors"))
    ours = lintrace.load_state_dict(run / "checkpoints" / lintrace.checkpoint_name(60))
    assert hf.keys() == ours.keys() and all(torch.equal(hf[k], ours[k]) for k in hf)


def test_lightning(tmp_path, env):
    pytest.importorskip("lightning")
    root = run_example("lightning", tmp_path, env)
    check_run(root / "runs" / "lightning", 60)
    config = json.loads((root / "runs" / "lightning" / "run.json").read_text())["config"]
    assert (config["optimizer"], config["lr"]) == ("sgd", 0.05)  # read from the LightningModule's optimizer


def test_unrecognised_model_is_analysed_with_spec(tmp_path):
    """spec=None: plain state dicts, no run.json; --spec and the stored probe."""
    from torch import nn

    torch.manual_seed(1)
    x = torch.randn(96, 8)
    y = x[:, :3].argmax(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    run = tmp_path / "ext"
    ckpt = lintrace.LogSpacedCheckpoints(model, run, per_decade=8, probe=(x[64:], y[64:]), total_steps=30, spec=None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt.step(0)
    for step in range(1, 31):
        loss = nn.functional.cross_entropy(model(x[:64]), y[:64])
        opt.zero_grad()
        loss.backward()
        opt.step()
        ckpt.step(step)
    ckpt.finish()
    assert not ckpt.known and not (run / "run.json").exists()
    spec, _ = lintrace.infer_spec(model, x)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    analyze(run / "checkpoints", "--spec", tmp_path / "spec.json", "--probe", run / "probe.safetensors", "--run-id", "ext")
    assert analysed_steps(run / "checkpoints" / "analysis" / "layer_metrics.parquet") == lintrace.log_spaced_steps(30)


def test_spec_given_for_a_cnn(tmp_path):
    """A model lintrace builds but the package does not recognise (docs/model-spec.md's
    CNN, whose names are lintrace's): spec= makes the folder a run, no flags."""
    from torch import nn

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.classifier = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))

        def forward(self, x):
            return self.classifier(self.features(x).flatten(1))

    spec = {"spec_version": 1, "kind": "cnn", "input_shape": [1, 8, 8], "num_classes": 4, "conv": [4, "M"],
            "kernel_size": 3, "dense": [16], "activation": "relu", "tap_activations": None,
            "leaky_relu_slope": 0.01, "linear_taps": []}
    torch.manual_seed(2)
    x = torch.randn(96, 1, 8, 8)
    y = x.flatten(1)[:, :4].argmax(1)
    model = CNN()
    assert lintrace.infer_spec(model, x) is None
    run = tmp_path / "cnn"
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with lintrace.LogSpacedCheckpoints(model, run, probe=(x[64:], y[64:]), total_steps=20, spec=spec) as ckpt:
        for step in range(0, 21):
            if step > 0:
                loss = nn.functional.cross_entropy(model(x[:64]), y[:64])
                opt.zero_grad()
                loss.backward()
                opt.step()
            ckpt.step(step)
    check_run(run, 20)


def test_inference_refuses_what_is_not_an_mlp():
    from torch import nn

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.r, self.b = nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)

        def forward(self, x):
            return self.b(self.r(self.a(x))) + x  # a skip connection: same modules, other function

    x = torch.randn(4, 8)
    assert lintrace.infer_spec(Skip(), x) is None
    assert lintrace.infer_spec(nn.Sequential(nn.Linear(8, 4, bias=False)), x) is None
    assert lintrace.infer_spec(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2)), x) is None
    spec, names = lintrace.infer_spec(nn.Sequential(nn.Flatten(), nn.Linear(8, 5), nn.GELU(), nn.Linear(5, 2)), x)
    assert spec["hidden"] == [5] and spec["activation"] == "gelu"
    assert names == {"1.weight": "layers.0.weight", "1.bias": "layers.0.bias",
                     "3.weight": "layers.2.weight", "3.bias": "layers.2.bias"}


def unit_linear_fit_numpy(z, a):
    """docs/metrics.md's unit_linear_fit, written directly in numpy (f64):
    per unit the least-squares fit a ≈ αz + β; pooled residual share over
    the units whose a takes more than one value, and their mean R²."""
    import numpy as np

    z = z.reshape(z.shape[0], -1).astype(np.float64)
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    res = var = r2 = 0.0
    varying = 0
    for j in range(z.shape[1]):
        if a[:, j].max() == a[:, j].min():
            continue
        X = np.stack([z[:, j], np.ones(len(z))], 1)
        coef, *_ = np.linalg.lstsq(X, a[:, j], rcond=None)
        r = float(((a[:, j] - X @ coef) ** 2).sum())
        v = float(((a[:, j] - a[:, j].mean()) ** 2).sum())
        res, var, r2, varying = res + r, var + v, r2 + 1 - r / v, varying + 1
    return res / var, r2 / varying


def test_any_architecture(tmp_path, env):
    import numpy as np
    import polars as pl
    from safetensors.numpy import load_file as load_np

    root = run_example("any architecture", tmp_path, env)
    run = root / "runs" / "custom"
    expected = lintrace.log_spaced_steps(200)
    assert steps_in(run / "activations") == expected
    out = analyze(run)
    # The analyzers that need the model itself say why they do not apply.
    assert "linearized_agreement does not apply: on activations captured in PyTorch" in out, out
    lm = pl.read_parquet(run / "analysis" / "layer_metrics.parquet")
    mm = pl.read_parquet(run / "analysis" / "model_metrics.parquet")
    assert sorted(lm["step"].unique().to_list()) == expected
    assert set(lm["analyzer"].unique()) == {"unit_linear_fit", "activation_regime", "block_linear_fit", "cka_time",
                                            "representation", "weights"}
    names = lm.filter(pl.col("analyzer") == "unit_linear_fit").select("tap", "layer_name", "layer_kind").unique().sort("tap")
    assert names.rows() == [(0, "act1", "conv2d"), (1, "act2", "conv2d"), (2, "se.act", "dense"), (3, "se.gate", "dense")]
    # The ReLU family only: two taps.
    assert sorted(lm.filter(pl.col("analyzer") == "activation_regime")["tap"].unique().to_list()) == [0, 2]
    probe = load_np(str(run / "probe.safetensors"))
    checked = 0
    for step in expected:
        t = load_np(str(run / "activations" / lintrace.checkpoint_name(step)))
        rows = lm.filter((pl.col("step") == step) & (pl.col("analyzer") == "unit_linear_fit"))
        for tap in range(4):
            nl, r2 = unit_linear_fit_numpy(t[f"taps.{tap}.z"], t[f"taps.{tap}.a"])
            got = {m: v for m, v in rows.filter(pl.col("tap") == tap).select("metric", "value").rows()}
            assert abs(got["nonlinearity"] - nl) <= 1e-6 * max(nl, 1e-12) + 1e-12, (step, tap, got, nl)
            assert abs(got["mean_unit_r2"] - r2) <= 1e-9, (step, tap, got, r2)
            checked += 1
        acc = float((t["logits"].argmax(1) == probe["labels"]).mean())
        got = mm.filter((pl.col("step") == step) & (pl.col("metric") == "accuracy"))["value"].to_list()
        assert got and abs(got[0] - acc) < 1e-12, (step, got, acc)
    assert checked == 4 * len(expected)
    # The fits say something: training moves the ReLU taps away from linear.
    nl = lm.filter((pl.col("analyzer") == "unit_linear_fit") & (pl.col("metric") == "nonlinearity") & (pl.col("tap") == 0))
    assert nl.sort("step")["value"].to_list()[-1] > 0.05
