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
