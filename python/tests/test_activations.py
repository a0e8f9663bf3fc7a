"""capture_activations: what it writes, what it refuses, and that
lintrace-analyze reads it (the README's example, with its numpy check, is
in test_readme.py)."""

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

import lintrace
from conftest import analyze


class Mlp(nn.Module):
    def __init__(self, shared_act=False):
        super().__init__()
        self.fc1, self.act1 = nn.Linear(6, 8), nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(8, 8)
        self.act2 = self.act1 if shared_act else nn.SiLU()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def run_folder(tmp_path, model, steps=4):
    torch.manual_seed(0)
    x = torch.randn(40, 6)
    y = x[:, :3].argmax(1)
    ckpt = lintrace.LogSpacedCheckpoints(model, tmp_path / "r", probe=(x, y), total_steps=steps, spec=None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt.step(0)
    for s in range(1, steps + 1):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ckpt.step(s)
    ckpt.finish()
    return tmp_path / "r"


def test_file_contents_and_in_place_activations(tmp_path):
    model = Mlp()
    run = run_folder(tmp_path, model)
    files = lintrace.capture_activations(run, model, {"act1": ("fc1", "act1"), "act2": (model.fc2, model.act2)}, verbose=False)
    assert [f.name for f in files] == [lintrace.checkpoint_name(s) for s in range(5)]
    with safe_open(str(files[-1]), "pt") as f:
        md = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    assert (md["format"], md["format_version"], md["step"], md["n"]) == ("lintrace.activations", "1", "4", "40")
    layout = json.loads(md["layout"])
    assert [(tap["name"], tap["activation"], tap["shape"]) for tap in layout["taps"]] == [("act1", "relu", [8]), ("act2", "silu", [8])]
    assert layout["taps"][0]["layer"] == {"kind": "dense", "name": "fc1", "in_features": 6, "out_features": 8}
    # z is the pre-activation even though ReLU(inplace=True) overwrites its input.
    model.load_state_dict(lintrace.load_state_dict(run / "checkpoints" / lintrace.checkpoint_name(4)))
    probe = lintrace.checkpoints.load_file(str(run / "probe.safetensors"))
    with torch.no_grad():
        z = model.fc1(probe["inputs"])
    assert torch.equal(t["taps.0.z"], z) and torch.equal(t["taps.0.a"], z.clamp(min=0)) and (z < 0).any()
    assert torch.equal(t["taps.0.input"], probe["inputs"]) and torch.equal(t["taps.1.weight"], model.fc2.weight)
    assert activation_size_matches(layout, files[-1])
    # Existing files are kept, and a second capture with other taps is refused.
    assert lintrace.capture_activations(run, model, {"act1": ("fc1", "act1"), "act2": (model.fc2, model.act2)}, verbose=False) == []
    model2 = Mlp()
    model2.load_state_dict(model.state_dict())
    (run / "activations" / lintrace.checkpoint_name(4)).unlink()
    with pytest.raises(ValueError, match="captured with another layout"):
        lintrace.capture_activations(run, model2, {"act1": model2.act1}, verbose=False)


def activation_size_matches(layout, path):
    # The estimate counts the tensors' bytes; the file adds its JSON header.
    data = path.stat().st_size
    est = lintrace.activation_bytes(layout, 40)
    return est <= data <= est + 8192


def test_refusals(tmp_path):
    model = Mlp(shared_act=True)
    run = run_folder(tmp_path, model, steps=1)
    with pytest.raises(RuntimeError, match="ran 2 times in one forward pass"):
        lintrace.capture_activations(run, model, {"act1": model.act1}, verbose=False)
    with pytest.raises(ValueError, match="no such submodule"):
        lintrace.capture_activations(run, model, {"x": "fc9"}, verbose=False)
    with pytest.raises(ValueError, match="changes the shape"):
        lintrace.capture_activations(run, model, {"head": model.head}, verbose=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint for steps"):
        lintrace.capture_activations(run, model, {"a": model.act1}, steps=[7], verbose=False)
    assert not (run / "activations").exists() or not list((run / "activations").glob("*"))


class Tokens(nn.Module):
    """Causal self-attention through nn.MultiheadAttention, then a
    per-position MLP whose layer maps [positions, features]."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc, self.act = nn.Linear(8, 12), nn.GELU(approximate="tanh")
        self.out, self.head = nn.Linear(12, 8), nn.Linear(8, 7)
        self.register_buffer("mask", torch.triu(torch.ones(5, 5, dtype=torch.bool), 1))

    def forward(self, ids):
        x = self.emb(ids)
        x = x + self.attn(x, x, x, attn_mask=self.mask, average_attn_weights=False)[0]
        return self.head(x + self.out(self.act(self.fc(x))))


def test_language_model_with_attention_in_half_precision(tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(0, 7, (16, 6))
    model = Tokens()
    x, y = ids[:, :5], ids[:, 1:]
    ckpt = lintrace.LogSpacedCheckpoints(model, tmp_path / "lm", probe=(x, y), total_steps=2, spec=None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt.step(0)
    for s in (1, 2):
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 7), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        ckpt.step(s)
    ckpt.finish()
    run = tmp_path / "lm"
    files = lintrace.capture_activations(run, model, {"mlp": ("fc", "act")}, {"attn": "attn"}, dtype=torch.float16, verbose=False)
    with safe_open(str(files[0]), "pt") as f:
        layout = json.loads(f.metadata()["layout"])
        assert f.get_tensor("taps.0.z").dtype == torch.float16 and f.get_tensor("logits").shape == (80, 7)
    assert layout["predictions_per_sample"] == 5
    assert layout["taps"][0]["layer"]["positions"] == 5 and layout["taps"][0]["activation"] == "gelu_tanh"
    assert layout["attention"] == [{"name": "attn", "heads": 2, "positions": 5, "causal": True, "tap": 0}]
    analyze(run)
    import polars as pl

    lm = pl.read_parquet(run / "analysis" / "layer_metrics.parquet")
    heads = lm.filter(pl.col("analyzer") == "attention")["layer_name"].unique().sort().to_list()
    assert heads == ["attn.head0", "attn.head1"]
    assert lm.filter((pl.col("analyzer") == "block_linear_fit") & (pl.col("metric") == "n_rows"))["value"].to_list()[0] == 80


def test_a_folder_without_spec_or_activations_says_what_to_do(tmp_path):
    import subprocess

    from conftest import binary

    run = run_folder(tmp_path, Mlp(), steps=1)
    r = subprocess.run([str(binary("lintrace-analyze")), str(run), "-q", "--device", "cpu"], capture_output=True, text=True)
    assert r.returncode != 0 and "lintrace.capture_activations" in r.stderr, r.stderr


def mu_numpy(f, s, y):
    """μ = I(F;Y) − I(F;Y|S) in bits, plug-in (docs/metrics.md), written directly."""
    import numpy as np
    from collections import Counter

    n = len(f)

    def h(*cols):
        c = np.array(list(Counter(zip(*cols)).values()), dtype=float) / n
        return float(-(c * np.log2(c)).sum())

    i_fy = h(f) + h(y) - h(f, y)
    i_fy_s = h(f, s) + h(y, s) - h(f, y, s) - h(s)
    return i_fy - i_fy_s


def test_mu_against_a_linear_classifier_trained_in_pytorch(tmp_path):
    import subprocess

    import numpy as np
    import polars as pl
    from safetensors.numpy import load_file as load_np

    from conftest import binary

    model = Mlp()
    run = run_folder(tmp_path, model, steps=8)
    lintrace.capture_activations(run, model, {"act1": ("fc1", "act1"), "act2": ("fc2", "act2")}, verbose=False)
    # The surrogate: a linear classifier, trained in PyTorch on the same data, its logits captured with no taps.
    torch.manual_seed(0)
    x = torch.randn(40, 6)
    y = x[:, :3].argmax(1)
    linear = nn.Linear(6, 3)
    ckpt = lintrace.LogSpacedCheckpoints(linear, tmp_path / "lin", probe=(x, y), total_steps=8, spec=None)
    opt = torch.optim.SGD(linear.parameters(), lr=0.5)
    for s in range(9):
        if s:
            loss = nn.functional.cross_entropy(linear(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ckpt.step(s)
    ckpt.finish()
    lintrace.capture_activations(tmp_path / "lin", linear, {}, verbose=False)
    r = subprocess.run([str(binary("lintrace-analyze")), str(run), "--device", "cpu", "--analyzers", "mu,performance",
                        "--surrogate", str(tmp_path / "lin"), "--surrogate", f"{tmp_path / 'lin'}@same"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "mu: compared on the probe" in r.stderr, r.stderr
    mm = pl.read_parquet(run / "analysis" / "model_metrics.parquet").filter(pl.col("metric") == "mu")
    assert sorted(mm["surrogate"].unique().to_list()) == ["lin@8", "lin@same"]
    labels = load_np(str(run / "probe.safetensors"))["labels"]
    final = load_np(str(tmp_path / "lin" / "activations" / lintrace.checkpoint_name(8)))["logits"].argmax(1)
    steps = lintrace.log_spaced_steps(8)
    assert sorted(mm["step"].unique().to_list()) == steps
    for step in steps:
        f = load_np(str(run / "activations" / lintrace.checkpoint_name(step)))["logits"].argmax(1)
        same = load_np(str(tmp_path / "lin" / "activations" / lintrace.checkpoint_name(step)))["logits"].argmax(1)
        for name, s in (("lin@8", final), ("lin@same", same)):
            got = mm.filter((pl.col("step") == step) & (pl.col("surrogate") == name))
            assert got.height == 1 and got["split"][0] == "probe"
            assert abs(got["value"][0] - mu_numpy(f, s, labels)) < 1e-9, (step, name)
    assert not np.array_equal(final, load_np(str(tmp_path / "lin" / "activations" / lintrace.checkpoint_name(0)))["logits"].argmax(1))


def test_attention_without_weights_says_how_to_get_them(tmp_path):
    class NoWeights(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.attn, self.act, self.head = nn.Embedding(7, 8), nn.MultiheadAttention(8, 2, batch_first=True), nn.ReLU(), nn.Linear(8, 7)

        def forward(self, ids):
            x = self.emb(ids)
            return self.head(self.act(self.attn(x, x, x, need_weights=False)[0]))

    torch.manual_seed(0)
    ids = torch.randint(0, 7, (4, 5))
    model = NoWeights()
    ckpt = lintrace.LogSpacedCheckpoints(model, tmp_path / "r", probe=(ids, ids), total_steps=0, spec=None)
    ckpt.step(0)
    with pytest.raises(ValueError, match="need_weights=True"):
        lintrace.capture_activations(tmp_path / "r", model, {"act": "act"}, {"attn": "attn"}, verbose=False)
