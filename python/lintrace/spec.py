"""Recognising a PyTorch model that lintrace rebuilds, and writing its spec
(docs/model-spec.md). Only MLPs are recognised here: a stack of
``nn.Linear`` (with bias) and one kind of activation, in any module layout
(``nn.Sequential``, lintrace's ``MLP`` class with ``self.layers``, a
LightningModule holding either). Anything else returns None; pass
``spec=`` (a spec dict or JSON file) for other architectures lintrace knows,
with the tensor names it expects.
"""

from typing import Dict, Optional, Tuple

import torch
from torch import nn

__all__ = ["infer_spec", "num_taps"]

# PyTorch activation module -> lintrace's activation name.
def _activation(m: nn.Module):
    if isinstance(m, nn.ReLU):
        return "relu", None
    if isinstance(m, nn.LeakyReLU):
        return "leaky_relu", float(m.negative_slope)
    if isinstance(m, nn.GELU):
        return ("gelu_tanh" if m.approximate == "tanh" else "gelu"), None
    if isinstance(m, nn.SiLU):
        return "silu", None
    if isinstance(m, nn.Tanh):
        return "tanh", None
    return None


# Leaves that are the identity in evaluation (lintrace analyses in eval mode).
_PASS = (nn.Identity, nn.Dropout)


def _logits(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        if "logits" in out:
            return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def infer_spec(model: nn.Module, example_input: torch.Tensor) -> Optional[Tuple[dict, Dict[str, str]]]:
    """(spec, names) for an MLP that lintrace rebuilds, else None. ``names``
    maps each state-dict name of ``model`` to lintrace's
    (``layers.{2i}.weight``, ``layers.{2i}.bias``). The guess is checked by
    running ``model`` and the MLP the spec describes on a few rows of
    ``example_input``: a model whose forward does something else (a skip
    connection, a different order) is not taken for an MLP."""
    leaves = [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
    linears, acts = [], []
    expect_linear = True
    seen_linear = False
    for name, m in leaves:
        if isinstance(m, _PASS):
            continue
        if isinstance(m, nn.Flatten) and not seen_linear:
            continue
        if not list(m.parameters(recurse=False)) and not list(m.buffers(recurse=False)) and _activation(m) is None:
            # A parameterless module we do not know (e.g. torchmetrics): not part of the net.
            if type(m).__module__.startswith("torch.nn"):
                return None
            continue
        if expect_linear:
            if not isinstance(m, nn.Linear) or m.bias is None:
                return None
            linears.append((name, m))
            seen_linear = True
        else:
            a = _activation(m)
            if a is None:
                return None
            acts.append(a)
        expect_linear = not expect_linear
    if not linears or len(acts) != len(linears) - 1:
        return None
    if len({a for a, _ in acts}) > 1:
        return None
    sd_names = set(model.state_dict().keys())
    names = {}
    for i, (n, _) in enumerate(linears):
        prefix = f"{n}." if n else ""
        names[f"{prefix}weight"] = f"layers.{2 * i}.weight"
        names[f"{prefix}bias"] = f"layers.{2 * i}.bias"
    if set(names) != sd_names:
        return None  # other parameters or buffers: not a plain MLP
    input_shape = [int(d) for d in example_input.shape[1:]]
    d_in = 1
    for d in input_shape:
        d_in *= d
    if linears[0][1].in_features != d_in:
        return None
    for (_, a), (_, b) in zip(linears, linears[1:]):
        if a.out_features != b.in_features:
            return None
    act, slope = acts[0] if acts else ("relu", None)
    spec = {
        "spec_version": 1,
        "kind": "mlp",
        "input_shape": input_shape,
        "num_classes": int(linears[-1][1].out_features),
        "hidden": [int(m.out_features) for _, m in linears[:-1]],
        "activation": act,
        "tap_activations": None,
        "leaky_relu_slope": slope if slope is not None else 0.01,
        "linear_taps": [],
    }
    if not _same_function(model, linears, acts, example_input):
        return None
    return spec, names


def _same_function(model, linears, acts, x) -> bool:
    x = x[:8].float()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = _logits(model(x))
            if ref is None:
                return False
            h = x.flatten(1)
            for i, (_, lin) in enumerate(linears):
                h = lin(h)
                if i < len(acts):
                    h = _apply(acts[i], h)
            return ref.shape == h.shape and torch.allclose(ref.float(), h.float(), rtol=1e-5, atol=1e-6)
    except Exception:
        return False
    finally:
        model.train(was_training)


def _apply(act, h):
    name, slope = act
    f = torch.nn.functional
    return {
        "relu": f.relu,
        "leaky_relu": lambda t: f.leaky_relu(t, slope),
        "gelu": f.gelu,
        "gelu_tanh": lambda t: f.gelu(t, approximate="tanh"),
        "silu": f.silu,
        "tanh": torch.tanh,
    }[name](h)


def num_taps(spec: dict) -> int:
    """Taps of an MLP spec (one per hidden layer); 0 when not computed here."""
    if spec.get("kind") == "mlp":
        return len(spec.get("hidden", []))
    return 0
