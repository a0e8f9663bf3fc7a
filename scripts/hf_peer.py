#!/usr/bin/env python3
"""transformers + numpy peer of lintrace's Hugging Face analysis, for
benchmarking: every revision of a checkpoint folder is loaded with
`transformers`, the probe goes through it in chunks with forward hooks, and
the metrics are computed in numpy (float64 where lintrace uses f64).

    python3 scripts/hf_peer.py CHECKPOINT_DIR --probe PROBE --threads 2

CHECKPOINT_DIR is one of
  * a model folder (config.json + weights): one revision;
  * a folder of revision folders (Pythia's layout: step0/, step1000/, ...;
    every sub-folder holding a config.json is a revision, ordered by the
    number in its name, then by name);
  * a Hugging Face hub cache repository folder (models--ORG--NAME/, with
    refs/ and snapshots/): every ref is a revision (`main` skipped when it
    names a commit another ref names).
PROBE is a safetensors file with `inputs` int64 [n, T] token ids and,
optionally, `labels` int64 [n, T] (the next token at every position);
without labels, position t is scored against inputs[:, t+1] and the last
position of each window is not scored. scripts/make_hf_bench.py writes one.

Per revision:
  load     AutoModelForCausalLM.from_pretrained(rev, dtype=float32,
           attn_implementation="eager"), eval mode (the eager attention is
           what returns the attention weights).
  forward  the probe in chunks of --chunk windows, no_grad, with forward
           hooks that copy to host numpy float32: each layer's MLP activation
           module's input z and output a (GPT-NeoX/GPT-2 `mlp.act`,
           Llama/OLMo `mlp.act_fn`: z is the gate projection's output),
           each layer's attention weights [chunk, heads, T, T] (the attention
           module's second output) and each layer's output hidden state
           (the residual stream); and the logits.
  metrics  per chunk in numpy, merged across chunks, so the chunk size does
           not change the numbers:
           - unit_linear_fit per layer: for each unit j (one feature at one
             position, as lintrace's units: docs/metrics.md, "Sequence
             models") the least-squares fit a ~ alpha_j z + beta_j over the
             windows, from
             f64 centred moments merged with Chan's update. Reported:
             `nonlinearity` (lintrace's definition, docs/metrics.md: pooled
             sum of residuals / pooled variance over the units whose output
             varies), `mean_unit_r2` (mean of R^2_j over those units) and
             `one_minus_mean_r2` = 1 - mean_unit_r2; `n_units_varying`,
             `n_units`.
           - attention per layer and head: `attention_entropy` = mean over
             queries with >= 2 admissible (causal) keys of
             H(row) / ln(number of admissible keys), `attention_max` = mean
             over all queries of the row's largest weight; the layer's mean
             over heads is printed, every head's value is in --json.
           - stream_rms per layer: the mean over tokens of the RMS of the
             layer's output hidden state.
           - performance: next-token cross-entropy (nats, f64 log-sum-exp
             from the f32 logits) and accuracy over every scored position.
  --all    also every other analyzer lintrace runs by default on such a
           model, in numpy / torch, the same numbers (python/tests/
           test_hf_peer.py compares every one): block_linear_fit (the
           tap's input -> a, and the attention sublayer, MLP sublayer and
           block as maps of the residual stream, ridge in f64), representation
           (effective rank from numpy's eigvalsh of the f64 covariance),
           cka_time (against the first and last revisions, which are run
           first), weights (norms of the MLP's input weight) and
           linearized_agreement (the 3L single / prefix / suffix variants,
           each a full forward pass with the replaced MLP activations swapped
           by a forward hook for each unit's affine fit; argmax and f64
           cross-entropy in torch, mu from the non-empty cells).
Timings (time.perf_counter) per revision: load (the model class's module is
imported during setup, so the first load does not pay for it), forward with hooks (incl.
the copies to numpy), metrics (numpy), total; peak RSS
(getrusage ru_maxrss, the process's high-water mark so far) after each
revision. --threads N sets torch.set_num_threads(N) and, unless already set,
OMP/OPENBLAS/MKL_NUM_THREADS for numpy's BLAS.

Output (stdout): one human-readable block per revision, then one
JSON line per revision ({"revision", "seconds", "peak_rss_mib",
"performance", "layers": [...]}); --json OUT also writes them all to OUT.
Memory per chunk: z, a (2 x chunk x T x MLP width x layers), attention
(chunk x heads x T^2 x layers), hidden states and logits (chunk x T x vocab),
all float32: Pythia-1b with T = 512 is about 0.6 GiB per window.
"""

import os
import sys


def _preset_threads(argv):
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402


# ----------------------------------------------------------------- revisions, probe
def find_revisions(root):
    root = Path(root)
    if (root / "config.json").exists():
        return [(root.name, root)]
    if (root / "refs").is_dir() and (root / "snapshots").is_dir():
        refs = {}
        for ref in sorted((root / "refs").rglob("*")):
            if ref.is_file():
                refs[str(ref.relative_to(root / "refs"))] = ref.read_text().strip()
        named = {h for r, h in refs.items() if r != "main"}
        revs = [(r, root / "snapshots" / h) for r, h in refs.items() if not (r == "main" and h in named)]
    else:
        revs = [(p.name, p) for p in root.iterdir() if p.is_dir() and (p / "config.json").exists()]

    def key(item):
        m = re.search(r"(\d+)", item[0])
        return (0, int(m.group(1)), item[0]) if m else (1, 0, item[0])

    revs.sort(key=key)
    if not revs:
        sys.exit(f"no revision (folder with config.json) under {root}")
    return revs


def load_probe(path):
    t = load_file(str(path))
    x = t["inputs"].astype(np.int64)
    if x.ndim != 2:
        sys.exit(f"probe inputs must be [n, T], got {x.shape}")
    if "labels" in t:
        y = t["labels"].astype(np.int64)
        assert y.shape == x.shape, (y.shape, x.shape)
        mask = np.ones_like(y, dtype=bool)
    else:
        y = np.zeros_like(x)
        y[:, :-1] = x[:, 1:]
        mask = np.ones_like(y, dtype=bool)
        mask[:, -1] = False
    return x, y, mask


# ----------------------------------------------------------------- model parts
def decoder_layers(model):
    for path in ("gpt_neox.layers", "transformer.h", "model.layers"):
        obj = model
        try:
            for p in path.split("."):
                obj = getattr(obj, p)
            return list(obj)
        except AttributeError:
            continue
    raise SystemExit(f"unsupported model class {type(model).__name__}")


def layer_parts(layer):
    mlp = layer.mlp
    act = getattr(mlp, "act", None) or getattr(mlp, "act_fn", None)
    attn = next((getattr(layer, n) for n in ("attention", "attn", "self_attn") if hasattr(layer, n)), None)
    if act is None or attn is None or not isinstance(act, torch.nn.Module):
        raise SystemExit(f"cannot find the MLP activation / attention of {type(layer).__name__}")
    return act, attn


def host(t):
    return t.detach().to(torch.float32).cpu().numpy().copy()


class Capture:
    def __init__(self, model, full=False):
        self.layers = decoder_layers(model)
        self.full = full
        self.buf = {}
        self.hooks = []
        for i, layer in enumerate(self.layers):
            act, attn = layer_parts(layer)
            self.hooks.append(act.register_forward_hook(self._act(i)))
            self.hooks.append(attn.register_forward_hook(self._attn(i)))
            self.hooks.append(layer.register_forward_hook(self._stream(i)))
            if full:
                # For the block fits: the layer's input stream, its attention's
                # output, the MLP's input (the tap's affine layer's input) and
                # the MLP's output.
                self.hooks.append(layer.register_forward_pre_hook(self._layer_in(i), with_kwargs=True))
                self.hooks.append(layer.mlp.register_forward_hook(self._mlp(i)))

    def _layer_in(self, i):
        def h(mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            self.buf[("x", i)] = host(x)
        return h

    def _mlp(self, i):
        def h(mod, inp, out):
            self.buf[("u", i)] = host(inp[0])
            self.buf[("m", i)] = host(out)
        return h

    def _act(self, i):
        def h(mod, inp, out):
            self.buf[("z", i)] = host(inp[0])
            self.buf[("a", i)] = host(out)
        return h

    def _attn(self, i):
        def h(mod, inp, out):
            if not (isinstance(out, tuple) and len(out) > 1 and out[1] is not None):
                raise SystemExit("the attention module returned no weights (eager attention needed)")
            self.buf[("attn", i)] = host(out[1])
            if self.full:
                self.buf[("att_out", i)] = host(out[0])
        return h

    def _stream(self, i):
        def h(mod, inp, out):
            self.buf[("h", i)] = host(out[0] if isinstance(out, tuple) else out)
        return h

    def take(self):
        b, self.buf = self.buf, {}
        return b

    def remove(self):
        for h in self.hooks:
            h.remove()


# ----------------------------------------------------------------- metrics (numpy)
class UnitMoments:
    """Per-unit f64 n, means, centred second moments of z and a and their
    co-moment, merged across chunks (Chan et al.); min/max of a."""

    def __init__(self):
        self.n = 0

    def add(self, z, a):
        # A unit is one feature at one position, fitted over the windows
        # (docs/metrics.md, "Sequence models"), as lintrace's taps are.
        z = z.reshape(z.shape[0], -1).astype(np.float64)
        a32 = a.reshape(a.shape[0], -1)
        a = a32.astype(np.float64)
        nb = z.shape[0]
        mz, ma = z.mean(axis=0), a.mean(axis=0)
        z -= mz
        a -= ma
        m2z = np.einsum("ij,ij->j", z, z)
        m2a = np.einsum("ij,ij->j", a, a)
        cza = np.einsum("ij,ij->j", z, a)
        amin, amax = a32.min(axis=0), a32.max(axis=0)
        if self.n == 0:
            self.n, self.mz, self.ma, self.m2z, self.m2a, self.cza = nb, mz, ma, m2z, m2a, cza
            self.amin, self.amax = amin, amax
            return
        n = self.n + nb
        dz, da = mz - self.mz, ma - self.ma
        f = self.n * nb / n
        self.m2z = self.m2z + m2z + dz * dz * f
        self.m2a = self.m2a + m2a + da * da * f
        self.cza = self.cza + cza + dz * da * f
        self.mz = self.mz + dz * nb / n
        self.ma = self.ma + da * nb / n
        self.n = n
        self.amin, self.amax = np.minimum(self.amin, amin), np.maximum(self.amax, amax)

    def result(self):
        varies = self.amax > self.amin
        m2z, m2a, c = self.m2z[varies], self.m2a[varies], self.cza[varies]
        res = m2a.copy()
        pos = m2z > 0
        res[pos] = m2a[pos] - c[pos] ** 2 / m2z[pos]
        res = np.clip(res, 0.0, m2a)
        nvar = int(varies.sum())
        var = float(m2a.sum())
        some = nvar > 0 and var > 0
        r2 = np.where(m2a > 0, 1.0 - res / np.where(m2a > 0, m2a, 1.0), 0.0)
        mean_r2 = float(r2.sum()) / nvar if some else None
        return {"nonlinearity": float(res.sum()) / var if some else None,
                "mean_unit_r2": mean_r2,
                "one_minus_mean_r2": None if mean_r2 is None else 1.0 - mean_r2,
                "n_units_varying": nvar, "n_units": int(len(varies))}

    def surrogate(self):
        """alpha, beta per unit (least squares; alpha = 0 where z is constant)."""
        pos = self.m2z > 0
        alpha = np.zeros_like(self.m2z)
        alpha[pos] = self.cza[pos] / self.m2z[pos]
        return alpha, self.ma - alpha * self.mz


class AttentionStats:
    def __init__(self):
        self.ent_sum = None

    def add(self, w):
        """w: [b, heads, T, T] float32, rows softmaxed over causal keys."""
        b, h, t, _ = w.shape
        w64 = w.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(w64 > 0, w64 * np.log(w64), 0.0)
        ent = -plogp.sum(axis=-1)  # [b, h, T]
        nkeys = np.arange(1, t + 1, dtype=np.float64)
        ratio = ent[..., 1:] / np.log(nkeys[1:])  # queries with >= 2 keys
        ent_sum = ratio.sum(axis=(0, 2))
        max_sum = w.max(axis=-1).astype(np.float64).sum(axis=(0, 2))
        if self.ent_sum is None:
            self.ent_sum, self.max_sum, self.n_ent, self.n_max = ent_sum, max_sum, 0, 0
        else:
            self.ent_sum = self.ent_sum + ent_sum
            self.max_sum = self.max_sum + max_sum
        self.n_ent += b * (t - 1)
        self.n_max += b * t

    def result(self):
        ent = self.ent_sum / self.n_ent if self.n_ent else np.full_like(self.ent_sum, np.nan)
        mx = self.max_sum / self.n_max
        return {"attention_entropy": [float(v) for v in ent], "attention_max": [float(v) for v in mx],
                "attention_entropy_mean": float(np.mean(ent)), "attention_max_mean": float(np.mean(mx))}


class Perf:
    def __init__(self):
        self.loss_sum, self.correct, self.n = 0.0, 0, 0

    def add(self, logits, labels, mask):
        for k in range(logits.shape[0]):  # a window at a time: [T, V] in f64
            lg = logits[k][mask[k]].astype(np.float64)
            y = labels[k][mask[k]]
            m = lg.max(axis=1, keepdims=True)
            lse = m[:, 0] + np.log(np.exp(lg - m).sum(axis=1))
            self.loss_sum += float((lse - lg[np.arange(len(y)), y]).sum())
            self.correct += int((lg.argmax(axis=1) == y).sum())
            self.n += len(y)

    def result(self):
        return {"loss": self.loss_sum / self.n if self.n else None,
                "accuracy": self.correct / self.n if self.n else None, "n_tokens": self.n}


# ----------------------------------------------------------------- every analyzer (--all)
# The lintrace-zoo peer's ridge fit (one implementation for both peers) and
# lintrace's constants (analyzers/src/linear_fit.rs, linearized_agreement.rs).
sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))
from torch_analyze import PREFIX_THRESHOLD, block_linear_fit  # noqa: E402


def rows_of(t):
    """[b, T, d] -> [b * T, d]: one row per (window, position)."""
    return t.reshape(-1, t.shape[-1])


def ridge_fit(X, Y, residual):
    """lintrace's block fit (centred ridge least squares from X to Y in f64);
    with `residual`, also the score of the residual stream map (Razzhigaev
    et al.): 1 - (RSS/TSS) / (2 - 2 tr(X_c^T Y_c) / sqrt(tr(X_c^T X_c) TSS))."""
    vals, _ = block_linear_fit(X, Y)
    if vals is None:
        return None
    out = {"linearity_score_residual": None, **vals}
    if residual and vals["nonlinearity"] is not None:
        Xc = X.astype(np.float64)
        Xc -= Xc.mean(axis=0)
        Yc = Y.astype(np.float64)
        Yc -= Yc.mean(axis=0)
        xx, xy, tss = (float(np.einsum("ij,ij->", a, b)) for a, b in ((Xc, Xc), (Xc, Yc), (Yc, Yc)))
        if xx > 0:
            t2 = 2.0 - 2.0 * xy / np.sqrt(xx * tss)
            out["linearity_score_residual"] = 1.0 - vals["nonlinearity"] / t2 if t2 > 1e-12 else None
    return out


def centred_second_moment(A):
    """(X_c, M): the centred f64 rows and the smaller of X_c^T X_c and X_c X_c^T."""
    Xc = A.astype(np.float64)
    Xc -= Xc.mean(axis=0)
    return Xc, (Xc.T @ Xc if Xc.shape[0] > Xc.shape[1] else Xc @ Xc.T)


def effective_rank(M, n):
    """exp(entropy) of the normalised singular values, from the eigenvalues
    of M, with lintrace's floor for what the Gram route resolves."""
    ev = np.linalg.eigvalsh(M)
    s = np.sqrt(np.maximum(ev, 0.0))
    mx = float(s.max()) if s.size else 0.0
    if mx <= 0:
        return None
    tol = max(np.sqrt(max(n, M.shape[0]) * np.finfo(np.float64).eps), 1e-12)
    kept = s[s > tol * mx]
    p = kept / kept.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def cka(Xc, Mx, Yc, My):
    """Linear CKA of two centred representations of the same rows."""
    if Yc is Xc:
        return 1.0 if float(np.sum(Mx * Mx)) > 0 else None
    xy = float(np.sum((Xc.T @ Yc) ** 2))
    den = np.sqrt(float(np.sum(Mx * Mx)) * float(np.sum(My * My)))
    return xy / den if den > 0 and np.isfinite(den) else None


def fc_weight(layer):
    """The weight [out, in] of the affine layer feeding the tap."""
    mlp = layer.mlp
    for name in ("dense_h_to_4h", "gate_proj", "c_fc", "fc_in"):
        if hasattr(mlp, name):
            w = getattr(mlp, name).weight.detach().to(torch.float64).numpy()
            return w.T if name == "c_fc" else w  # GPT-2's Conv1D is [in, out]
    raise SystemExit(f"no MLP input layer in {type(mlp).__name__}")


def weight_metrics(w, w0):
    fro = float(np.linalg.norm(w))
    sn = float(np.linalg.svd(w, compute_uv=False)[0])
    n0 = float(np.linalg.norm(w0))
    return {"frobenius_norm": fro, "spectral_norm": sn, "stable_rank": fro * fro / (sn * sn) if sn > 0 else None,
            "rel_dist_from_init": float(np.linalg.norm(w - w0)) / n0 if n0 > 0 else None}


def entropy_bits(*cols):
    _, c = np.unique(np.stack(cols, axis=1), axis=0, return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def mu_bits(f, s, y):
    """Plug-in I(F;Y) - I(F;Y|S) in bits, from the non-empty cells only
    (a 50,000-token vocabulary has no dense K^3 table)."""
    i_fy = entropy_bits(f) + entropy_bits(y) - entropy_bits(f, y)
    i_fy_s = entropy_bits(f, s) + entropy_bits(y, s) - entropy_bits(f, y, s) - entropy_bits(s)
    return i_fy - i_fy_s


def row_scores(logits, labels, mask):
    """(argmax, cross-entropy in f64) of every scored position of a chunk."""
    lg = logits.reshape(-1, logits.shape[-1])
    keep = torch.from_numpy(mask.reshape(-1))
    lg = lg[keep]
    yy = torch.from_numpy(labels.reshape(-1))[keep]
    lp = torch.log_softmax(lg.to(torch.float64), dim=-1)
    return lg.argmax(dim=-1).numpy(), (-lp.gather(1, yy[:, None])[:, 0]).numpy()


def variant_scores(model, layers, x, y, mask, chunk, surrogates, replaced):
    """The network with the MLP activations of `replaced` swapped for each
    unit's affine fit: full forward passes, as forward hooks do it."""
    hooks = []
    for i in replaced:
        act, _ = layer_parts(layers[i])
        alpha, beta = surrogates[i]

        def h(mod, inp, out, alpha=alpha, beta=beta):
            return inp[0] * alpha + beta
        hooks.append(act.register_forward_hook(h))
    try:
        fs, ces = [], []
        for lo in range(0, x.shape[0], chunk):
            hi = min(lo + chunk, x.shape[0])
            with torch.no_grad():
                logits = model(input_ids=torch.from_numpy(x[lo:hi]), use_cache=False).logits
                f, ce = row_scores(logits, y[lo:hi], mask[lo:hi])
            fs.append(f)
            ces.append(ce)
        return np.concatenate(fs), np.concatenate(ces)
    finally:
        for h in hooks:
            h.remove()


def linearized_agreement(model, layers, x, y, mask, chunk, surrogates, base):
    """Every single / prefix / suffix variant, as lintrace's analyzer lists them."""
    n = len(layers)
    fb, ceb = base
    yy = y[mask]
    out, depth = [], -1
    for kind, prefix in (("single", ""), ("prefix", "prefix_"), ("suffix", "suffix_")):
        for k in range(n):
            replaced = {"single": [k], "prefix": list(range(k + 1)), "suffix": list(range(k, n))}[kind]
            fv, cev = variant_scores(model, layers, x, y, mask, chunk, surrogates, replaced)
            agree = float(np.mean(fv == fb))
            out.append({"layer": k, prefix + "agreement": agree, prefix + "delta_loss": float(cev.mean() - ceb.mean()),
                        prefix + "mu_bits": mu_bits(fb, fv, yy)})
            if kind == "prefix" and agree >= PREFIX_THRESHOLD:
                depth = max(depth, k)
    return out, depth


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------- main
def load_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def reference(path, x, chunk):
    """What cka_time and weights compare against at another revision (step 0,
    the final one): each tap's centred activations and second moment, and
    each tap's affine weight."""
    model = load_model(path)
    layers = decoder_layers(model)
    acts = [[] for _ in layers]
    # Only the MLP activations' outputs: the attention weights and streams
    # that Capture copies are not needed here.
    hooks = [layer_parts(layer)[0].register_forward_hook(lambda mod, inp, out, i=i: acts[i].append(rows_of(host(out))))
             for i, layer in enumerate(layers)]
    try:
        for lo in range(0, x.shape[0], chunk):
            with torch.no_grad():
                model(input_ids=torch.from_numpy(x[lo:lo + chunk]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {"grams": [centred_second_moment(np.concatenate(a)) for a in acts],
            "weights": [fc_weight(layer) for layer in layers]}


def analyse(name, path, x, y, mask, chunk, full=False, refs=None):
    sec = {}
    t0 = time.perf_counter()
    model = load_model(path)
    sec["load"] = time.perf_counter() - t0
    vocab = model.config.vocab_size
    if x.max() >= vocab:
        raise SystemExit(f"{name}: probe token id {int(x.max())} >= vocab_size {vocab}")
    cap = Capture(model, full=full)
    n_layers = len(cap.layers)
    units = [UnitMoments() for _ in range(n_layers)]
    attn = [AttentionStats() for _ in range(n_layers)]
    rms_sum, rms_n = np.zeros(n_layers), 0
    perf = Perf()
    kept = {k: [[] for _ in range(n_layers)] for k in ("a", "u", "x", "att_out", "m", "h")} if full else None
    base_f, base_ce = [], []
    t_fwd = t_met = 0.0
    try:
        for lo in range(0, x.shape[0], chunk):
            hi = min(lo + chunk, x.shape[0])
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model(input_ids=torch.from_numpy(x[lo:hi]), use_cache=False)
            # --all scores the logits in torch (below); only the three-metric
            # run copies them to numpy.
            logits = None if full else host(out.logits)
            buf = cap.take()
            t1 = time.perf_counter()
            if full:
                f, ce = row_scores(out.logits, y[lo:hi], mask[lo:hi])
                base_f.append(f)
                base_ce.append(ce)
            del out
            for i in range(n_layers):
                z, a = buf.pop(("z", i)), buf.pop(("a", i))
                units[i].add(z, a)
                attn[i].add(buf.pop(("attn", i)))
                h = buf.pop(("h", i))
                if full:
                    kept["a"][i].append(rows_of(a))
                    kept["h"][i].append(rows_of(h))
                    for k in ("u", "x", "att_out", "m"):
                        kept[k][i].append(rows_of(buf.pop((k, i))))
                h = h.astype(np.float64)
                rms_sum[i] += float(np.sqrt((h * h).mean(axis=-1)).sum())
            rms_n += (hi - lo) * x.shape[1]
            if not full:  # else from the row scores above
                perf.add(logits, y[lo:hi], mask[lo:hi])
            del logits, buf
            t2 = time.perf_counter()
            t_fwd += t1 - t0
            t_met += t2 - t1
    finally:
        cap.remove()
    t0 = time.perf_counter()
    layers = []
    for i in range(n_layers):
        row = {"layer": i}
        row.update(units[i].result())
        row.update(attn[i].result())
        row["stream_rms"] = rms_sum[i] / rms_n
        layers.append(row)
    if full:
        yy, fb, ceb = y[mask], np.concatenate(base_f), np.concatenate(base_ce)
        result_perf = {"loss": float(ceb.mean()), "accuracy": float(np.mean(fb == yy)), "n_tokens": int(len(yy))}
    else:
        result_perf = perf.result()
    t_met += time.perf_counter() - t0
    sec["forward_with_hooks"] = t_fwd
    sec["metrics"] = t_met
    rec = {"revision": name, "path": str(path), "seconds": sec, "performance": result_perf, "layers": layers}
    if full:
        analyse_all(model, cap.layers, x, y, mask, chunk, kept, units, (np.concatenate(base_f), np.concatenate(base_ce)),
                    refs or {}, rec)
    sec["total"] = sum(sec.values())
    rec["peak_rss_mib"] = peak_rss_mib()
    del model
    return rec


def analyse_all(model, layers, x, y, mask, chunk, kept, units, base, refs, rec):
    """The analyzers beyond the three above, as lintrace runs them with no
    --analyzers: block_linear_fit, representation, cka_time, weights and
    linearized_agreement (activation_regime applies to ReLU-family taps
    only, mu needs a text split: neither applies to a GELU model probed
    with token ids)."""
    sec = rec["seconds"]
    parallel = bool(getattr(model.config, "use_parallel_residual", False))
    t0 = time.perf_counter()
    blocks = []
    for i in range(len(layers)):
        cat = {k: np.concatenate(v[i]) for k, v in kept.items() if k != "a"}
        X, att, m, out = cat["x"], cat["att_out"], cat["m"], cat["h"]
        mid = X + att
        mlp_in = X if parallel else mid
        row = {"layer": i, "tap": ridge_fit(cat["u"], np.concatenate(kept["a"][i]), residual=False),
               "attention_sublayer": ridge_fit(X, mid, residual=True),
               "mlp_sublayer": ridge_fit(mlp_in, mlp_in + m, residual=True),
               "transformer_block": ridge_fit(X, out, residual=True)}
        blocks.append(row)
        for k in ("u", "x", "att_out", "m", "h"):
            kept[k][i] = None
    sec["block_linear_fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reps, own = [], []
    for i in range(len(layers)):
        A = np.concatenate(kept["a"][i])
        kept["a"][i] = None
        Xc, M = centred_second_moment(A)
        reps.append({"layer": i, "effective_rank": effective_rank(M, A.shape[0])})
        own.append((Xc, M))
    sec["representation"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ckas = []
    for i, (Xc, M) in enumerate(own):
        r = {"layer": i}
        for key, ref in (("cka_to_init", refs.get("init")), ("cka_to_final", refs.get("final"))):
            Yc, My = (Xc, M) if ref is None else ref["grams"][i]
            r[key] = cka(Xc, M, Yc, My)
        ckas.append(r)
    del own
    sec["cka_time"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    init = refs.get("init")
    weights = []
    for i, layer in enumerate(layers):
        w = fc_weight(layer)
        weights.append({"layer": i, **weight_metrics(w, w if init is None else init["weights"][i])})
    sec["weights"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    T = x.shape[1]
    surrogates = []
    for u in units:
        alpha, beta = u.surrogate()
        surrogates.append((torch.from_numpy(alpha.astype(np.float32)).reshape(T, -1),
                           torch.from_numpy(beta.astype(np.float32)).reshape(T, -1)))
    variants, depth = linearized_agreement(model, layers, x, y, mask, chunk, surrogates, base)
    sec["linearized_agreement"] = time.perf_counter() - t0
    rec.update(block_linear_fit=blocks, representation=reps, cka_time=ckas, weights=weights,
               linearized_agreement=variants, linear_prefix_depth=depth)


def fmt(v, p=4):
    return "null" if v is None else f"{v:.{p}f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint_dir", metavar="CHECKPOINT_DIR")
    ap.add_argument("--probe", required=True, help="safetensors with inputs [n, T] int64 (and labels)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=2, help="windows per forward pass (default 2)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N probe windows")
    ap.add_argument("--revisions", default="", help="comma-separated revision names to keep")
    ap.add_argument("--json", default="", help="write every revision's record to this file")
    ap.add_argument("--all", action="store_true",
                    help="every analyzer lintrace runs by default on this model (block fits, effective rank, CKA to "
                         "the first and last revisions, weights, the linearised variants), not only the three above")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    t0 = time.perf_counter()
    x, y, mask = load_probe(args.probe)
    if args.limit:
        x, y, mask = x[: args.limit], y[: args.limit], mask[: args.limit]
    revs = find_revisions(args.checkpoint_dir)
    if args.revisions:
        keep = set(args.revisions.split(","))
        revs = [r for r in revs if r[0] in keep]
    # import the model class's module now, so the first revision's load time is not the import's
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(revs[0][1]))]
    setup = time.perf_counter() - t0
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}, "
          f"threads {args.threads}, probe {x.shape[0]} x {x.shape[1]} tokens, chunk {args.chunk}, "
          f"{len(revs)} revision(s), setup {setup:.2f} s", flush=True)
    records = []
    refs = {}
    if args.all and len(revs) > 1:
        t0 = time.perf_counter()
        refs = {"init": reference(revs[0][1], x, args.chunk), "final": reference(revs[-1][1], x, args.chunk)}
        print(f"# references (first and last revision): {time.perf_counter() - t0:.2f} s", flush=True)
    for name, path in revs:
        own = {k: (None if path == revs[i][1] else v) for k, v, i in (("init", refs.get("init"), 0),
                                                                       ("final", refs.get("final"), -1))}
        rec = analyse(name, path, x, y, mask, args.chunk, full=args.all, refs=own)
        s = rec["seconds"]
        extra = "".join(f", {k} {v:.2f} s" for k, v in s.items() if k not in ("load", "forward_with_hooks", "metrics", "total"))
        print(f"\n== {name}: load {s['load']:.2f} s, forward+hooks {s['forward_with_hooks']:.2f} s, "
              f"metrics {s['metrics']:.2f} s{extra}, total {s['total']:.2f} s, peak RSS {rec['peak_rss_mib']:.0f} MiB")
        p = rec["performance"]
        print(f"   loss {fmt(p['loss'])} nats, accuracy {fmt(p['accuracy'])} over {p['n_tokens']} tokens")
        print("   layer  nonlin  1-meanR2  varying/units  attn_entropy  attn_max  stream_rms")
        for r in rec["layers"]:
            print(f"   {r['layer']:5d}  {fmt(r['nonlinearity'])}  {fmt(r['one_minus_mean_r2'])}  "
                  f"{r['n_units_varying']:7d}/{r['n_units']:<5d}  {fmt(r['attention_entropy_mean'])}        "
                  f"{fmt(r['attention_max_mean'])}    {r['stream_rms']:.4f}")
        sys.stdout.flush()
        records.append(rec)
    print()
    for rec in records:
        print(json.dumps(rec))
    tot = {k: sum(r["seconds"][k] for r in records) for k in records[0]["seconds"]}
    print(json.dumps({"summary": {"revisions": len(records), "seconds": tot, "setup_seconds": setup,
                                  "peak_rss_mib": peak_rss_mib(), "threads": args.threads,
                                  "probe_shape": list(x.shape), "chunk": args.chunk}}))
    if args.json:
        Path(args.json).write_text("\n".join(json.dumps(r) for r in records) + "\n")


if __name__ == "__main__":
    main()
