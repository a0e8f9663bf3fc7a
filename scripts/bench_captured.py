"""Benchmark of the any-architecture route (docs/pytorch.md): what capturing
activations in PyTorch costs, what lintrace-analyze then takes, and a numpy
peer computing unit_linear_fit from the same files, in one call.

    python3 scripts/bench_captured.py OUT_DIR [--probe 2048] [--bin target/release]

The model is a small CNN lintrace does not rebuild (a 3×3 stem, two
depthwise-separable blocks with squeeze-and-excitation gates, a head) on
3×32×32 inputs, random data, 3 checkpoints (steps 0, 1, 2 of SGD). Prints
one JSON line per measurement: capture seconds and MiB per checkpoint,
lintrace-analyze's wall time and peak memory (every analyzer that applies;
unit_linear_fit alone), the peer's wall time for unit_linear_fit, and the
largest difference between the two. Needs torch, safetensors, numpy,
polars and the release binaries.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
import lintrace  # noqa: E402


class SqueezeExcite(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.act, self.fc2, self.gate = nn.Linear(c, c // 4), nn.ReLU(), nn.Linear(c // 4, c), nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3))))))[:, :, None, None]


class Block(nn.Module):
    """Depthwise 3×3 (stride 2), GELU, pointwise 1×1, ReLU, SE."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.dw, self.act1 = nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in), nn.GELU()
        self.pw, self.act2 = nn.Conv2d(c_in, c_out, 1), nn.ReLU()
        self.se = SqueezeExcite(c_out)

    def forward(self, x):
        return self.se(self.act2(self.pw(self.act1(self.dw(x)))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.act = nn.Conv2d(3, 32, 3, padding=1), nn.ReLU()
        self.b1, self.b2 = Block(32, 64), Block(64, 128)
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.b2(self.b1(self.act(self.stem(x)))).mean((2, 3)))


def taps(m):
    t = {"stem": (m.stem, m.act)}
    for name, b in (("b1", m.b1), ("b2", m.b2)):
        t[f"{name}.dw"] = (b.dw, b.act1)
        t[f"{name}.pw"] = (b.pw, b.act2)
        t[f"{name}.se.act"] = (b.se.fc1, b.se.act)
        t[f"{name}.se.gate"] = (b.se.fc2, b.se.gate)
    return t


def unit_linear_fit(z, a):
    """Vectorised over units: the same definition as tests/it's numpy check."""
    z = z.reshape(z.shape[0], -1).astype(np.float64)
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    zc, ac = z - z.mean(0), a - a.mean(0)
    sxx, syy, sxy = (zc * zc).sum(0), (ac * ac).sum(0), (zc * ac).sum(0)
    varying = a.max(0) > a.min(0)
    res = np.where(sxx > 0, syy - sxy * sxy / np.where(sxx > 0, sxx, 1), syy).clip(0, None)
    res = np.minimum(res, syy)
    return float(res[varying].sum() / syy[varying].sum())


def timed(cmd):
    t = time.time()
    r = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stdout + r.stderr)
    return time.time() - t, int(r.stderr.strip().splitlines()[-1]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--probe", type=int, default=2048)
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    run = out / "custom"
    x = torch.randn(args.probe + 512, 3, 32, 32)
    y = torch.randint(0, 10, (len(x),))
    model = Net()
    ckpt = lintrace.LogSpacedCheckpoints(model, run, probe=(x[:args.probe], y[:args.probe]), total_steps=2, spec=None,
                                         existing="overwrite")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt.step(0)
    for s in (1, 2):
        i = torch.randint(args.probe, len(x), (128,))
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        ckpt.step(s)
    ckpt.finish()
    t = time.time()
    files = lintrace.capture_activations(run, model, taps(model), overwrite=True, verbose=False)
    capture = (time.time() - t) / len(files)
    mib = sum(f.stat().st_size for f in files) / len(files) / 2**20
    print(json.dumps({"what": "capture (PyTorch)", "seconds_per_checkpoint": round(capture, 2), "mib_per_checkpoint": round(mib, 1),
                      "probe": args.probe, "taps": len(taps(model)),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
    analyze = str(Path(args.bin) / "lintrace-analyze")
    env_threads = {"RAYON_NUM_THREADS": str(args.threads)}
    os.environ.update(env_threads)
    for label, flags in (("lintrace-analyze, every analyzer that applies", []),
                         ("lintrace-analyze, unit_linear_fit", ["--analyzers", "unit_linear_fit"])):
        subprocess.run(["rm", "-rf", str(run / "analysis")], check=True)
        wall, peak = timed([analyze, str(run), "--device", "cpu", "-q", *flags])
        print(json.dumps({"what": label, "seconds_per_checkpoint": round(wall / len(files), 2), "peak_rss_mib": round(peak)}))
    # The peer: numpy on the same files.
    from safetensors.numpy import load_file

    t = time.time()
    peer = {}
    for f in files:
        d = load_file(str(f))
        step = int(f.name[5:13])
        for i in range(len(taps(model))):
            peer[(step, i)] = unit_linear_fit(d[f"taps.{i}.z"], d[f"taps.{i}.a"])
    wall = time.time() - t
    import polars as pl

    lm = pl.read_parquet(run / "analysis" / "layer_metrics.parquet").filter(pl.col("metric") == "nonlinearity")
    diff = max(abs(v - peer[(s, i)]) for s, i, v in lm.select("step", "tap", "value").rows())
    print(json.dumps({"what": "numpy peer, unit_linear_fit from the same files", "seconds_per_checkpoint": round(wall / len(files), 2),
                      "max_abs_difference": diff}))


if __name__ == "__main__":
    main()
