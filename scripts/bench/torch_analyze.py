#!/usr/bin/env python3
"""PyTorch + numpy peer of lintrace's analyzer benchmark (BENCHMARKS.md,
"Analyzer"): a straightforward implementation of the nine analyzers

  performance, activation_regime, unit_linear_fit, block_linear_fit,
  linearized_agreement, cka_time, weights, representation, mu

(definitions: docs/metrics.md; the numpy code follows fixtures/make_golden.py and
fixtures/make_golden_suite.py, the project's independent golden-value
generators, vectorised) on the checkpoints of a lintrace run folder, timed per
analyzer and per checkpoint.

Run folder: RUN_DIR/probe.safetensors and RUN_DIR/checkpoints/step_XXXXXXXX.safetensors.
A folder without checkpoints/ (e.g. fixtures/golden/tiny_cnn) is read as a
run whose checkpoints are its *.safetensors files that carry a "spec" in
their metadata, at the "step" their metadata gives.

How it is computed
------------------
* The model is rebuilt in PyTorch from the checkpoint's "spec" metadata with
  lintrace's module names (MLP: layers.{2i}; CNN: features.{i} counting conv,
  activation and pool modules, classifier.{2j}), loaded with
  load_state_dict(strict=True), float32, eval mode. Each nonlinearity is a
  `Tap` module; forward hooks capture z (its input) and a (its output), and
  forward pre-hooks on the affine layers capture the block input. The probe
  goes through in chunks of --chunk samples (default 256, lintrace's default)
  and the captured values are copied to host numpy float32 arrays.
* Metrics in numpy: unit moments, Gram matrices, block fits and norms in
  float64 (where lintrace uses f64), from the float32 captured values.
  - activation_regime: counts of z > 0 per unit (relu/leaky_relu taps).
  - unit_linear_fit: per-unit centred moments (f64); pooled residual share.
  - block_linear_fit: ridge least squares (lambda = 1e-6 tr(G)/p, no penalty
    on the bias, i.e. centred) of the block output a_l on the block input:
    dense blocks regress on the whole input vector (skipped, with a note, when
    rows <= features, as lintrace does); conv blocks regress each output
    position's channels on its zero-padded k x k input patch, with at most
    65,536 (sample, position) rows per tap: min(H*W, 65536 // n) positions per
    sample, chosen by lintrace's own seeded partial Fisher-Yates shuffle
    (positions_for in analyzers/src/block_linear_fit.rs, reproduced here), so
    the numbers match lintrace's tables.
  - linearized_agreement: per-unit affine surrogates alpha*z+beta (OLS on the
    probe, from the f64 unit moments), then the full network is run on the
    probe for each of the 3*L variants (tap l alone, prefix 0..k, suffix
    k..L-1) with those taps replaced; agreement, delta_loss (nats) and mu_bits
    against the intact network; linear_prefix_depth.
  - cka_time: the centred n x n Gram (f64) of each tap's post-activations at
    this checkpoint, at step 0 and at the final checkpoint (the smallest and
    largest step of the run folder). As in lintrace, the two reference Gram
    sets are computed once per run (loading and running those checkpoints)
    and cached; their cost is charged to the first checkpoint that needs them.
    When this checkpoint is a reference step, its own Gram set is reused.
  - weights: Frobenius / spectral norm (f64 SVD), stable rank and relative
    distance from step 0 of each tap's affine weight (conv kernels as
    out x (in*kh*kw)); step 0's weights are read once per run. No forward pass.
  - representation: effective rank from np.linalg.eigvalsh of the same Gram
    (singular values = sqrt of the eigenvalues; those <= 1e-12 * max dropped).
  - mu: plug-in mu_Y(F;S) = I(F;Y) - I(F;Y|S) in bits. FOR TIMING PURPOSES
    ONLY: F is evaluated on --mu-samples inputs (default 10,000, the size of a
    CIFAR-10/MNIST test split) formed by cycling the probe inputs (labels
    cycled with them), against a FIXED RANDOM LINEAR surrogate
    S(x) = argmax(x W), W ~ N(0, 1/d) seeded (lintrace fits a logistic
    regression once per dataset and caches it, so a fit is not a
    per-checkpoint cost). The repetition of the inputs is deliberately not
    exploited. mu values are therefore NOT comparable with lintrace's
    (different surrogate and data); the other eight analyzers' values are.
* Timing (time.perf_counter; CUDA work is synchronised by the copies to the
  host). Setup (untimed per analyzer, reported as setup_seconds): reading the
  probe and one warm-up chunk. On CUDA, TF32 is off unless --tf32 (PyTorch
  would use TF32 convolutions by default; docs/metrics.md asks GPU values to match
  the CPU's). Each analyzer "alone" includes loading the checkpoint, building the
  model and the forward pass(es) it needs (performance: one plain pass).
  "all nine together" loads once, runs ONE pass with hooks that serves
  performance, activation_regime, unit_linear_fit, block_linear_fit and the
  surrogates; computes ONE Gram per tap, reused by cka_time and
  representation; then the 3*L variant passes, the weights and the mu pass.
  Per-run caches (reference Grams, step-0 weights, block positions) are
  separate for each analyzer alone and for "together", as if each were its
  own lintrace invocation. Reading the probe is setup, not timed per analyzer.
* Threads: --threads N sets torch.set_num_threads(N) and, unless already set
  in the environment, OMP/OPENBLAS/MKL_NUM_THREADS=N for numpy's BLAS.

Output: one JSON line per checkpoint ({"step", "seconds": {analyzer: s},
"sum_alone", "all_together", ...}) and a final {"summary": ...} line on
stdout; --csv OUT writes rows step,analyzer,tap,metric,value (tap empty for
model-level metrics, value empty for null) from the "together" pass (or
from the analyzers alone with --mode alone), to compare with lintrace's
layer_metrics / model_metrics tables.

Example:
  /opt/bench-venv/bin/python scripts/bench/torch_analyze.py RUN_DIR \\
      --device cpu --threads 2 --csv /tmp/torch_metrics.csv
"""

import os
import sys


def _preset_threads(argv):
    """numpy's BLAS reads its thread count at import: set it from --threads."""
    n = "2"
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, n)


if __name__ == "__main__":
    _preset_threads(sys.argv[1:])

import argparse  # noqa: E402
import csv  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors import safe_open  # noqa: E402
from torch import nn  # noqa: E402

ANALYZERS = ["performance", "activation_regime", "unit_linear_fit", "block_linear_fit",
             "linearized_agreement", "cka_time", "weights", "representation", "mu"]
MAX_ROWS = 65_536          # block_linear_fit: rows per tap
RIDGE = 1e-6               # lambda = RIDGE * tr(G) / p
PREFIX_THRESHOLD = 0.95    # linear_prefix_depth
ERANK_REL_TOL = 1e-12      # effective_rank: drop s <= tol * max(s)
GRAM_BLOCK = 2048          # features per f64 block when forming a Gram
MOMENT_BLOCK_ELEMS = 1 << 22  # f64 elements per block of unit moments
MU_SURROGATE_SEED = 1234
U64 = (1 << 64) - 1


# --------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------

def read_safetensors(path):
    """(dict name -> numpy array, metadata dict)."""
    with safe_open(path, framework="numpy") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta


def read_metadata(path):
    with safe_open(path, framework="numpy") as f:
        return dict(f.metadata() or {})


def find_checkpoints(run_dir):
    """Sorted [(step, path)]."""
    cdir = os.path.join(run_dir, "checkpoints")
    out = []
    if os.path.isdir(cdir):
        for p in glob.glob(os.path.join(cdir, "step_*.safetensors")):
            m = re.fullmatch(r"step_(\d+)\.safetensors", os.path.basename(p))
            if m:
                out.append((int(m.group(1)), p))
    else:
        for p in glob.glob(os.path.join(run_dir, "*.safetensors")):
            if os.path.basename(p) == "probe.safetensors":
                continue
            md = read_metadata(p)
            if "spec" in md:
                out.append((int(md.get("step", "0")), p))
    out.sort()
    if len({s for s, _ in out}) != len(out):
        raise SystemExit(f"{run_dir}: two checkpoints with the same step")
    if not out:
        raise SystemExit(f"{run_dir}: no checkpoints found")
    return out


def load_probe(run_dir, limit):
    t, md = read_safetensors(os.path.join(run_dir, "probe.safetensors"))
    x = np.ascontiguousarray(t["inputs"], dtype=np.float32)
    y = np.asarray(t["labels"], dtype=np.int64)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y, md


# --------------------------------------------------------------------------
# model (lintrace's spec, PyTorch module names)
# --------------------------------------------------------------------------

def tap_activation(spec, l):
    if l in (spec.get("linear_taps") or []):
        return "identity"
    ta = spec.get("tap_activations")
    if ta is not None:
        return ta[l]
    return spec["activation"]


class Tap(nn.Module):
    """One nonlinearity. `surrogate` = (alpha, beta) tensors shaped
    [1, *tap shape] replaces it by alpha*z + beta (linearized variants)."""

    def __init__(self, act, slope, index):
        super().__init__()
        self.act = act.replace("-", "_")
        self.slope = float(slope)
        self.index = index
        self.surrogate = None

    def forward(self, z):
        if self.surrogate is not None:
            alpha, beta = self.surrogate
            return z * alpha + beta
        if self.act == "relu":
            return F.relu(z)
        if self.act == "leaky_relu":
            return F.leaky_relu(z, self.slope)
        if self.act == "gelu":
            return F.gelu(z)  # exact (erf) form, as lintrace
        if self.act == "tanh":
            return torch.tanh(z)
        if self.act == "identity":
            return z
        raise ValueError(f"unknown activation {self.act}")


class Model(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.kind = spec["kind"]
        slope = spec.get("leaky_relu_slope", 0.01)
        self.affine = []    # affine module feeding each tap, in tap order
        self.taps = []      # Tap modules in order
        self.layer_names = []
        self.tap_shapes = []
        self.block_kinds = []  # "dense" | ("conv", k, padding)
        if self.kind == "mlp":
            d = int(np.prod(spec["input_shape"]))
            mods = []
            for i, w in enumerate(spec["hidden"]):
                lin = nn.Linear(d, w)
                tap = Tap(tap_activation(spec, i), slope, i)
                mods += [lin, tap]
                self.affine.append(lin)
                self.taps.append(tap)
                self.layer_names.append(f"layers.{2 * i}")
                self.tap_shapes.append((w,))
                self.block_kinds.append("dense")
                d = w
            mods.append(nn.Linear(d, spec["num_classes"]))
            self.layers = nn.Sequential(*mods)
        elif self.kind == "cnn":
            k = spec["kernel_size"]
            c, h, w = spec["input_shape"]
            feats = []
            l = 0
            for item in spec["conv"]:
                if item == "M":
                    feats.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
                    continue
                conv = nn.Conv2d(c, int(item), k, padding=k // 2)
                tap = Tap(tap_activation(spec, l), slope, l)
                self.layer_names.append(f"features.{len(feats)}")
                feats += [conv, tap]
                self.affine.append(conv)
                self.taps.append(tap)
                self.tap_shapes.append((int(item), h, w))
                self.block_kinds.append(("conv", k, k // 2))
                c = int(item)
                l += 1
            d = c * h * w
            cls = []
            for width in spec["dense"]:
                lin = nn.Linear(d, width)
                tap = Tap(tap_activation(spec, l), slope, l)
                self.layer_names.append(f"classifier.{len(cls)}")
                cls += [lin, tap]
                self.affine.append(lin)
                self.taps.append(tap)
                self.tap_shapes.append((width,))
                self.block_kinds.append("dense")
                d = width
                l += 1
            cls.append(nn.Linear(d, spec["num_classes"]))
            self.features = nn.Sequential(*feats)
            self.classifier = nn.Sequential(*cls)
        else:
            raise SystemExit(f"spec kind {self.kind!r} is not supported (mlp, cnn)")
        self.num_taps = len(self.taps)

    def forward(self, x):
        if self.kind == "mlp":
            return self.layers(torch.flatten(x, 1))
        return self.classifier(torch.flatten(self.features(x), 1))

    def set_surrogates(self, surrogates):
        """surrogates: list (per tap) of (alpha, beta) tensors or None."""
        for tap, s in zip(self.taps, surrogates):
            tap.surrogate = s


def load_model(path, device):
    tensors, meta = read_safetensors(path)
    spec = json.loads(meta["spec"])
    model = Model(spec)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
                           for k, v in tensors.items()}, strict=True)
    model = model.to(device).eval()
    return model, spec, tensors


def weight_matrices(model, tensors):
    """Per tap: the feeding affine weight as a float32 out x fan_in matrix."""
    out = []
    for name in model.layer_names:
        w = tensors[name + ".weight"]
        out.append(w.reshape(w.shape[0], -1))
    return out


# --------------------------------------------------------------------------
# forward passes
# --------------------------------------------------------------------------

@torch.no_grad()
def run_forward(model, x_dev, chunk, want=()):
    """Logits (numpy f32 [n, K]) and, per tap, a dict with the captured
    'z', 'a', 'input' (those in `want`) as numpy f32 arrays [n, ...]."""
    n = x_dev.shape[0]
    want = set(want)
    caps = [dict() for _ in range(model.num_taps)]
    handles = []
    state = {"lo": 0, "hi": 0}

    def store(l, key, t):
        arr = caps[l].get(key)
        if arr is None:
            arr = np.empty((n, *t.shape[1:]), dtype=np.float32)
            caps[l][key] = arr
        arr[state["lo"]:state["hi"]] = t.detach().to("cpu", torch.float32).numpy()

    if want & {"z", "a"}:
        for l, tap in enumerate(model.taps):
            def hook(mod, inp, out, l=l):
                if "z" in want:
                    store(l, "z", inp[0])
                if "a" in want:
                    store(l, "a", out)
            handles.append(tap.register_forward_hook(hook))
    if "input" in want:
        for l, aff in enumerate(model.affine):
            def pre(mod, inp, l=l):
                store(l, "input", inp[0])
            handles.append(aff.register_forward_pre_hook(pre))
    logits = np.empty((n, 0), dtype=np.float32)
    try:
        parts = []
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            state["lo"], state["hi"] = lo, hi
            parts.append(model(x_dev[lo:hi]).to("cpu", torch.float32).numpy())
        if parts:
            logits = np.concatenate(parts)
    finally:
        for h in handles:
            h.remove()
    return logits, caps


def flat(a):
    return a.reshape(a.shape[0], -1)


# --------------------------------------------------------------------------
# metrics (numpy)
# --------------------------------------------------------------------------

def cross_entropy(logits, labels):
    """Per-sample cross-entropy (nats), f64 from f32 logits."""
    lg = logits.astype(np.float64)
    m = lg.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(lg - m).sum(axis=1))
    return lse - lg[np.arange(len(labels)), labels]


def performance(logits, labels):
    n = len(labels)
    if n == 0:
        return {"loss": None, "accuracy": None}
    return {"loss": float(cross_entropy(logits, labels).mean()),
            "accuracy": float(np.mean(np.argmax(logits, axis=1) == labels))}


# The golden-value generator's own definition (fixtures/make_golden.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fixtures"))
from make_golden import binary_entropy_bits  # noqa: E402


def activation_regime(z):
    """z: [n, units] f32."""
    n = z.shape[0]
    counts = np.count_nonzero(z > 0, axis=0)
    p = counts / n
    on = float(np.mean(counts == n))
    off = float(np.mean(counts == 0))
    return {"frac_active": float(p.mean()), "frac_always_on": on, "frac_always_off": off,
            "frac_switching": 1.0 - on - off, "pattern_entropy": float(binary_entropy_bits(p).mean())}


def unit_moments(z, a):
    """Per-unit f64 moments of z, a ([n, units] f32), in column blocks:
    dict mean_z, mean_a, m2_z, m2_a, c_za (centred sums), varies (a max > min)."""
    n, u = z.shape
    keys = ("mean_z", "mean_a", "m2_z", "m2_a", "c_za")
    out = {k: np.empty(u) for k in keys}
    out["varies"] = np.empty(u, dtype=bool)
    step = max(1, MOMENT_BLOCK_ELEMS // max(n, 1))
    for lo in range(0, u, step):
        hi = min(lo + step, u)
        zb = z[:, lo:hi].astype(np.float64)
        ab = a[:, lo:hi].astype(np.float64)
        mz, ma = zb.mean(axis=0), ab.mean(axis=0)
        zb -= mz
        ab -= ma
        out["mean_z"][lo:hi] = mz
        out["mean_a"][lo:hi] = ma
        out["m2_z"][lo:hi] = np.einsum("ij,ij->j", zb, zb)
        out["m2_a"][lo:hi] = np.einsum("ij,ij->j", ab, ab)
        out["c_za"][lo:hi] = np.einsum("ij,ij->j", zb, ab)
        out["varies"][lo:hi] = a[:, lo:hi].max(axis=0) > a[:, lo:hi].min(axis=0)
    return out


def unit_linear_fit(m):
    varies = m["varies"]
    m2z, m2a, c = m["m2_z"][varies], m["m2_a"][varies], m["c_za"][varies]
    res = m2a.copy()
    pos = m2z > 0
    res[pos] = m2a[pos] - c[pos] ** 2 / m2z[pos]
    res = np.clip(res, 0.0, m2a)
    nvar = int(varies.sum())
    var = float(m2a.sum())
    some = nvar > 0 and var > 0
    r2 = np.where(m2a > 0, 1.0 - res / np.where(m2a > 0, m2a, 1.0), 0.0)
    return {"nonlinearity": float(res.sum()) / var if some else None,
            "mean_unit_r2": float(r2.sum()) / nvar if some else None,
            "n_units_varying": float(nvar), "n_units": float(len(varies))}


def unit_surrogate(m):
    """alpha, beta per unit (OLS; alpha = 0 where z is constant)."""
    pos = m["m2_z"] > 0
    alpha = np.zeros_like(m["m2_z"])
    alpha[pos] = m["c_za"][pos] / m["m2_z"][pos]
    beta = m["mean_a"] - alpha * m["mean_z"]
    return alpha, beta


def positions_for(g, m, total):
    """lintrace's deterministic choice of m of `total` positions for probe
    sample g (seeded partial Fisher-Yates with xorshift64)."""
    idx = list(range(total))
    if m >= total:
        return idx
    state = ((g + 1) * 0x9E3779B97F4A7C15) & U64
    for i in range(m):
        state ^= (state << 13) & U64
        state ^= state >> 7
        state ^= (state << 17) & U64
        j = i + state % (total - i)
        idx[i], idx[j] = idx[j], idx[i]
    return idx[:m]


def block_positions(cache, n, total):
    """[n, m] positions per sample (cached per run: identical at every checkpoint)."""
    key = ("positions", n, total)
    if key not in cache:
        m = min(total, max(MAX_ROWS // max(n, 1), 1))
        cache[key] = np.array([positions_for(g, m, total) for g in range(n)], dtype=np.int64).reshape(n, m)
    return cache[key]


def block_design(kind, x_in, a, cache):
    """Regression rows (X [rows, p], Y [rows, q]) in float32."""
    n = x_in.shape[0]
    if kind == "dense":
        return flat(x_in), flat(a)
    _, k, pad = kind
    _, c, h, w = x_in.shape
    _, q, ho, wo = a.shape
    pos = block_positions(cache, n, ho * wo)
    s = np.repeat(np.arange(n), pos.shape[1])
    oi, oj = (pos // wo).ravel(), (pos % wo).ravel()
    xp = np.pad(x_in, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    X = np.empty((len(s), c, k, k), dtype=np.float32)
    ch = np.arange(c)[None, :]
    for di in range(k):
        for dj in range(k):
            X[:, :, di, dj] = xp[s[:, None], ch, (oi + di)[:, None], (oj + dj)[:, None]]
    Y = a[s[:, None], np.arange(q)[None, :], oi[:, None], oj[:, None]]
    return X.reshape(len(s), c * k * k), Y


def block_linear_fit(X, Y):
    """Ridge fit in f64. Returns (values dict or None if rows <= p, note)."""
    rows, p = X.shape
    if rows <= p:
        return None, (f"{p} input features but only {rows} regression rows; an affine fit "
                      f"would be exact, so no rows are written")
    X = X.astype(np.float64)
    Y = Y.astype(np.float64)
    X -= X.mean(axis=0)
    Y -= Y.mean(axis=0)
    G = X.T @ X
    C = X.T @ Y
    tss = float(np.einsum("ij,ij->", Y, Y))
    vals = {"n_rows": float(rows), "n_features": float(p)}
    if not tss > 0:
        vals.update(nonlinearity=None, linearity_score=None)
        return vals, None
    tr = float(np.trace(G))
    if tr > 0:
        lam = RIDGE * tr / p
        B = np.linalg.solve(G + lam * np.eye(p), C)
        rss = tss - 2.0 * float(np.sum(B * C)) + float(np.sum(B * (G @ B)))
        rss = min(max(rss, 0.0), tss)
    else:
        rss = tss
    nl = rss / tss
    vals.update(nonlinearity=nl, linearity_score=1.0 - nl)
    return vals, None


def gram(a):
    """Centred n x n Gram (f64) of a [n, features] f32, in feature blocks."""
    n, f = a.shape
    K = np.zeros((n, n))
    for lo in range(0, f, GRAM_BLOCK):
        b = a[:, lo:lo + GRAM_BLOCK].astype(np.float64)
        K += b @ b.T
    rm = K.mean(axis=1)
    K += rm.mean() - rm[:, None] - rm[None, :]
    return K


def cka(gx, gy):
    xy = float(np.einsum("ij,ij->", gx, gy))
    den = np.sqrt(float(np.einsum("ij,ij->", gx, gx)) * float(np.einsum("ij,ij->", gy, gy)))
    return xy / den if den > 0 and np.isfinite(den) else None


def effective_rank(K):
    ev = np.linalg.eigvalsh(K)
    s = np.sqrt(np.maximum(ev, 0.0))
    mx = float(s.max()) if s.size else 0.0
    if mx <= 0:
        return None
    kept = s[s > ERANK_REL_TOL * mx]
    p = kept / kept.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def weight_metrics(w, w0):
    w64 = w.astype(np.float64)
    fro = float(np.linalg.norm(w64))
    sn = float(np.linalg.svd(w64, compute_uv=False)[0]) if w64.size else 0.0
    rel = None
    if w0 is not None and w0.shape == w.shape:
        n0 = float(np.linalg.norm(w0.astype(np.float64)))
        if n0 > 0:
            rel = float(np.linalg.norm(w64 - w0.astype(np.float64))) / n0
    return {"frobenius_norm": fro, "spectral_norm": sn,
            "stable_rank": fro * fro / (sn * sn) if sn > 0 else None,
            "rel_dist_from_init": rel}


def _cmi_ab_given_c(t):
    """I(A;B|C) in bits from a count table t[a, b, c] (0 log 0 = 0)."""
    n = t.sum()
    n_c = t.sum(axis=(0, 1))
    n_ac = t.sum(axis=1)
    n_bc = t.sum(axis=0)
    a, b, c = np.nonzero(t)
    v = t[a, b, c]
    return float(np.sum(v / n * np.log2(v * n_c[c] / (n_ac[a, c] * n_bc[b, c]))))


def mu_stats(f, s, y, K):
    """Plug-in mu_Y(F;S) = I(F;Y) - I(F;Y|S) and parts, in bits."""
    f, s, y = (np.asarray(v, dtype=np.int64) for v in (f, s, y))
    n = len(f)
    if n == 0:
        return None
    t = np.bincount((f * K + s) * K + y, minlength=K ** 3).reshape(K, K, K).astype(np.float64)
    i_fy = _cmi_ab_given_c(t.sum(axis=1)[:, :, None])
    i_fs = _cmi_ab_given_c(t.sum(axis=2)[:, :, None])
    i_fy_s = _cmi_ab_given_c(t.transpose(0, 2, 1))
    i_fs_y = _cmi_ab_given_c(t)
    return {"mu": i_fy - i_fy_s, "i_f_y": i_fy, "i_f_y_given_s": i_fy_s, "i_f_s": i_fs,
            "i_f_s_given_y": i_fs_y, "agreement": float(np.mean(f == s)),
            "surrogate_accuracy": float(np.mean(s == y))}


# --------------------------------------------------------------------------
# the analysis of one checkpoint
# --------------------------------------------------------------------------

class Ctx:
    """What stays fixed over a run: probe, checkpoints, device, options."""

    def __init__(self, args, ckpts, x, y):
        self.args = args
        self.device = torch.device(args.device)
        self.ckpts = dict(ckpts)
        self.init_step = ckpts[0][0]
        self.final_step = ckpts[-1][0]
        self.x = x
        self.y = y
        self.n = len(y)
        self.x_dev = torch.from_numpy(x).to(self.device)
        self.chunk = args.chunk
        self.mu_idx = np.arange(args.mu_samples) % self.n
        self.mu_y = y[self.mu_idx]


def rows_layer(rows, step, analyzer, tap, vals):
    for k, v in vals.items():
        rows.append((step, analyzer, tap, k, v))


def tap_grams(ctx, caps):
    return [gram(flat(c["a"])) for c in caps]


def ref_grams(ctx, cache, ref_step, step, own):
    """Gram sets of a reference checkpoint, cached per run."""
    key = ("grams", ref_step)
    if ref_step == step and key not in cache:
        cache[key] = own
    if key not in cache:
        model, _, _ = load_model(ctx.ckpts[ref_step], ctx.device)
        _, caps = run_forward(model, ctx.x_dev, ctx.chunk, want=("a",))
        cache[key] = tap_grams(ctx, caps)
        cache["gram_sets_computed"] = cache.get("gram_sets_computed", 0) + 1
    return cache[key]


def init_weights(ctx, cache, model):
    if "init_weights" not in cache:
        t0, _ = read_safetensors(ctx.ckpts[ctx.init_step])
        cache["init_weights"] = weight_matrices(model, t0)
    return cache["init_weights"]


def do_cka(ctx, cache, step, grams, rows):
    g0 = ref_grams(ctx, cache, ctx.init_step, step, grams)
    gf = ref_grams(ctx, cache, ctx.final_step, step, grams)
    for l, g in enumerate(grams):
        rows.append((step, "cka_time", l, "cka_to_init", cka(g, g0[l])))
        rows.append((step, "cka_time", l, "cka_to_final", cka(g, gf[l])))


def do_linearized(ctx, model, base_logits, surrogates, step, rows, K):
    """surrogates: per tap (alpha, beta) f64 arrays."""
    L = model.num_taps
    dev = ctx.device
    sur_t = [(torch.from_numpy(a.astype(np.float32)).reshape(1, *model.tap_shapes[l]).to(dev),
              torch.from_numpy(b.astype(np.float32)).reshape(1, *model.tap_shapes[l]).to(dev))
             for l, (a, b) in enumerate(surrogates)]
    y = ctx.y
    fb = np.argmax(base_logits, axis=1)
    base_ce = cross_entropy(base_logits, y).mean()
    depth = -1
    try:
        for kind, prefix in (("single", ""), ("prefix", "prefix_"), ("suffix", "suffix_")):
            for k in range(L):
                taps = {"single": [k], "prefix": range(0, k + 1), "suffix": range(k, L)}[kind]
                model.set_surrogates([sur_t[l] if l in taps else None for l in range(L)])
                v_logits, _ = run_forward(model, ctx.x_dev, ctx.chunk)
                fv = np.argmax(v_logits, axis=1)
                agree = float(np.mean(fv == fb))
                dl = float(cross_entropy(v_logits, y).mean() - base_ce)
                m = mu_stats(fb, fv, y, K)
                rows.append((step, "linearized_agreement", k, prefix + "agreement", agree))
                rows.append((step, "linearized_agreement", k, prefix + "delta_loss", dl))
                rows.append((step, "linearized_agreement", k, prefix + "mu_bits", m["mu"] if m else None))
                if kind == "prefix" and agree >= PREFIX_THRESHOLD:
                    depth = max(depth, k)
    finally:
        model.set_surrogates([None] * L)
    rows.append((step, "linearized_agreement", None, "linear_prefix_depth", float(depth)))


@torch.no_grad()
def do_mu(ctx, model, spec, step, rows):
    K = spec["num_classes"]
    N = len(ctx.mu_idx)
    idx_dev = torch.from_numpy(ctx.mu_idx).to(ctx.device)
    preds = []
    for lo in range(0, N, ctx.chunk):
        xb = ctx.x_dev.index_select(0, idx_dev[lo:lo + ctx.chunk])
        preds.append(model(xb).argmax(dim=1).cpu().numpy())
    f = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
    # fixed random linear surrogate (stands in for lintrace's cached logistic regression)
    d = int(np.prod(ctx.x.shape[1:]))
    rng = np.random.default_rng(MU_SURROGATE_SEED)
    W = (rng.standard_normal((d, K)) / np.sqrt(d)).astype(np.float32)
    s = np.argmax(flat(ctx.x)[ctx.mu_idx] @ W, axis=1)
    m = mu_stats(f, s, ctx.mu_y, K)
    for k in ("mu", "i_f_y", "i_f_y_given_s", "agreement", "surrogate_accuracy"):
        rows.append((step, "mu", None, k, m[k] if m else None))
    rows.append((step, "mu", None, "network_accuracy", float(np.mean(f == ctx.mu_y)) if N else None))
    rows.append((step, "mu", None, "n", float(N)))


def analyze_alone(ctx, name, step, cache, rows, notes):
    """One analyzer on one checkpoint, from scratch (load + its passes)."""
    model, spec, tensors = load_model(ctx.ckpts[step], ctx.device)
    K = spec["num_classes"]
    if name == "performance":
        logits, _ = run_forward(model, ctx.x_dev, ctx.chunk)
        rows_layer(rows, step, name, None, performance(logits, ctx.y))
    elif name == "activation_regime":
        _, caps = run_forward(model, ctx.x_dev, ctx.chunk, want=("z",))
        for l, c in enumerate(caps):
            if model.taps[l].act in ("relu", "leaky_relu"):
                rows_layer(rows, step, name, l, activation_regime(flat(c["z"])))
    elif name == "unit_linear_fit":
        _, caps = run_forward(model, ctx.x_dev, ctx.chunk, want=("z", "a"))
        for l, c in enumerate(caps):
            rows_layer(rows, step, name, l, unit_linear_fit(unit_moments(flat(c["z"]), flat(c["a"]))))
    elif name == "block_linear_fit":
        _, caps = run_forward(model, ctx.x_dev, ctx.chunk, want=("input", "a"))
        do_block(model, caps, step, cache, rows, notes)
    elif name == "linearized_agreement":
        logits, caps = run_forward(model, ctx.x_dev, ctx.chunk, want=("z", "a"))
        sur = [unit_surrogate(unit_moments(flat(c["z"]), flat(c["a"]))) for c in caps]
        del caps
        do_linearized(ctx, model, logits, sur, step, rows, K)
    elif name == "cka_time":
        _, caps = run_forward(model, ctx.x_dev, ctx.chunk, want=("a",))
        grams = tap_grams(ctx, caps)
        del caps
        do_cka(ctx, cache, step, grams, rows)
    elif name == "weights":
        w0 = init_weights(ctx, cache, model)
        for l, w in enumerate(weight_matrices(model, tensors)):
            rows_layer(rows, step, name, l, weight_metrics(w, w0[l]))
    elif name == "representation":
        _, caps = run_forward(model, ctx.x_dev, ctx.chunk, want=("a",))
        for l, c in enumerate(caps):
            rows.append((step, name, l, "effective_rank", effective_rank(gram(flat(c["a"])))))
    elif name == "mu":
        do_mu(ctx, model, spec, step, rows)
    else:
        raise ValueError(name)


def do_block(model, caps, step, cache, rows, notes):
    for l, c in enumerate(caps):
        X, Y = block_design(model.block_kinds[l], c["input"], c["a"], cache)
        vals, note = block_linear_fit(X, Y)
        if vals is None:
            notes.append(f"step {step} block_linear_fit tap {l}: {note}")
            continue
        rows_layer(rows, step, "block_linear_fit", l,
                   {k: vals[k] for k in ("n_rows", "n_features", "nonlinearity", "linearity_score")})


def analyze_together(ctx, selected, step, cache, rows, notes):
    """The selected analyzers sharing one load, one hooked pass, one Gram per tap."""
    sel = set(selected)
    model, spec, tensors = load_model(ctx.ckpts[step], ctx.device)
    K = spec["num_classes"]
    want = set()
    if sel & {"activation_regime", "unit_linear_fit", "linearized_agreement"}:
        want |= {"z"}
    if sel & {"unit_linear_fit", "linearized_agreement", "block_linear_fit", "cka_time", "representation"}:
        want |= {"a"}
    if "block_linear_fit" in sel:
        want |= {"input"}
    need_pass = bool(want) or sel & {"performance", "linearized_agreement"}
    logits, caps = (run_forward(model, ctx.x_dev, ctx.chunk, want=want) if need_pass
                    else (None, []))
    if "performance" in sel:
        rows_layer(rows, step, "performance", None, performance(logits, ctx.y))
    if "activation_regime" in sel:
        for l, c in enumerate(caps):
            if model.taps[l].act in ("relu", "leaky_relu"):
                rows_layer(rows, step, "activation_regime", l, activation_regime(flat(c["z"])))
    surrogates = []
    if sel & {"unit_linear_fit", "linearized_agreement"}:
        for l, c in enumerate(caps):
            m = unit_moments(flat(c["z"]), flat(c["a"]))
            if "unit_linear_fit" in sel:
                rows_layer(rows, step, "unit_linear_fit", l, unit_linear_fit(m))
            surrogates.append(unit_surrogate(m))
            c.pop("z", None)
    if "block_linear_fit" in sel:
        do_block(model, caps, step, cache, rows, notes)
        for c in caps:
            c.pop("input", None)
    if sel & {"cka_time", "representation"}:
        grams = tap_grams(ctx, caps)
        if "representation" in sel:
            for l, g in enumerate(grams):
                rows.append((step, "representation", l, "effective_rank", effective_rank(g)))
        if "cka_time" in sel:
            do_cka(ctx, cache, step, grams, rows)
        del grams
    del caps
    if "linearized_agreement" in sel:
        do_linearized(ctx, model, logits, surrogates, step, rows, K)
    if "weights" in sel:
        w0 = init_weights(ctx, cache, model)
        for l, w in enumerate(weight_matrices(model, tensors)):
            rows_layer(rows, step, "weights", l, weight_metrics(w, w0[l]))
    if "mu" in sel:
        do_mu(ctx, model, spec, step, rows)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def parse_steps(text, available):
    if text is None:
        return sorted({available[0], available[-1]})
    if text == "all":
        return list(available)
    steps = [int(s) for s in text.split(",") if s.strip()]
    missing = [s for s in steps if s not in available]
    if missing:
        raise SystemExit(f"no checkpoint for step(s) {missing}; available: {available}")
    return steps


def set_tf32(on):
    prec = "tf32" if on else "ieee"
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        torch.backends.cudnn.conv.fp32_precision = prec
        torch.backends.cuda.matmul.fp32_precision = prec
    else:
        torch.backends.cudnn.allow_tf32 = on
        torch.backends.cuda.matmul.allow_tf32 = on


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", metavar="RUN_DIR")
    ap.add_argument("--steps", help="comma list of steps, or 'all' (default: first and last)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2,
                    help="torch.set_num_threads and BLAS threads (default 2)")
    ap.add_argument("--probe-limit", type=int, metavar="N", help="use the first N probe samples")
    ap.add_argument("--chunk", type=int, default=256, help="samples per forward chunk (default 256)")
    ap.add_argument("--mu-samples", type=int, default=10_000,
                    help="inputs for mu, cycling the probe (default 10000)")
    ap.add_argument("--analyzers", default=",".join(ANALYZERS),
                    help="comma list (default: all nine)")
    ap.add_argument("--mode", default="both", choices=["alone", "together", "both"],
                    help="time each analyzer alone, all together, or both (default)")
    ap.add_argument("--csv", metavar="OUT", help="write step,analyzer,tap,metric,value rows")
    ap.add_argument("--tf32", action="store_true",
                    help="CUDA: allow TF32 convolutions/matmuls (default: off, full fp32)")
    args = ap.parse_args(argv)

    selected = [a.strip() for a in args.analyzers.split(",") if a.strip()]
    bad = [a for a in selected if a not in ANALYZERS]
    if bad:
        ap.error(f"unknown analyzer(s) {bad}; known: {ANALYZERS}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("CUDA is not available")
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        set_tf32(args.tf32)

    t_setup = time.perf_counter()
    ckpts = find_checkpoints(args.run_dir)
    available = [s for s, _ in ckpts]
    steps = parse_steps(args.steps, available)
    x, y, probe_md = load_probe(args.run_dir, args.probe_limit)
    ctx = Ctx(args, ckpts, x, y)
    # untimed warm-up: one chunk through the first checkpoint's model, so
    # one-time library initialisation is not charged to the first analyzer
    model, _, _ = load_model(ckpts[0][1], ctx.device)
    run_forward(model, ctx.x_dev[:args.chunk], args.chunk, want=("z", "a", "input"))
    del model
    sync(ctx.device)
    setup_s = time.perf_counter() - t_setup

    alone_caches = {a: {} for a in selected}
    together_cache = {}
    all_rows_alone, all_rows_together, notes = [], [], []
    per_ckpt = []
    for step in steps:
        rec = {"step": step, "n_probe": ctx.n, "seconds": {}}
        if args.mode in ("alone", "both"):
            for a in selected:
                t0 = time.perf_counter()
                analyze_alone(ctx, a, step, alone_caches[a], all_rows_alone, notes)
                sync(ctx.device)
                rec["seconds"][a] = time.perf_counter() - t0
            rec["sum_alone"] = sum(rec["seconds"].values())
        if args.mode in ("together", "both"):
            t0 = time.perf_counter()
            analyze_together(ctx, selected, step, together_cache,
                             all_rows_together, notes if args.mode == "together" else [])
            sync(ctx.device)
            rec["all_together"] = time.perf_counter() - t0
        per_ckpt.append(rec)
        print(json.dumps(rec), flush=True)

    rows = all_rows_together if args.mode != "alone" else all_rows_alone
    if args.mode == "both":
        # the two paths must agree (same code on the same captured values)
        d = {(r[0], r[1], r[2], r[3]): r[4] for r in all_rows_alone}
        for r in all_rows_together:
            v = d.get((r[0], r[1], r[2], r[3]), "missing")
            if v == "missing" or (v is None) != (r[4] is None) or (
                    v is not None and abs(v - r[4]) > 1e-9 * max(1.0, abs(v))):
                notes.append(f"alone/together differ: {r[:4]} {v} vs {r[4]}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["step", "analyzer", "tap", "metric", "value"])
            for st, an, tap, met, val in rows:
                wr.writerow([st, an, "" if tap is None else tap, met,
                             "" if val is None else repr(float(val))])

    summary = {
        "run_dir": os.path.abspath(args.run_dir),
        "steps": steps,
        "n_probe": ctx.n,
        "probe_hash": probe_md.get("hash"),
        "mu_samples": args.mu_samples,
        "device": args.device,
        "threads": args.threads,
        "chunk": args.chunk,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "setup_seconds": setup_s,
        "tf32": bool(args.tf32) if args.device == "cuda" else None,
        "mode": args.mode,
    }
    if args.mode in ("alone", "both"):
        summary["seconds_total_alone"] = {a: sum(r["seconds"][a] for r in per_ckpt) for a in selected}
        summary["seconds_per_checkpoint_alone"] = {
            a: v / len(per_ckpt) for a, v in summary["seconds_total_alone"].items()}
        summary["cka_time_reference_gram_sets_computed"] = alone_caches.get("cka_time", {}).get(
            "gram_sets_computed", 0) if "cka_time" in selected else None
    if args.mode in ("together", "both"):
        tot = sum(r["all_together"] for r in per_ckpt)
        summary["seconds_total_together"] = tot
        summary["seconds_per_checkpoint_together"] = tot / len(per_ckpt)
    if args.device == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(0)
    summary["notes"] = sorted(set(notes))
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
