"""Activations of any PyTorch architecture, captured for lintrace.

lintrace rebuilds its own architectures (and Hugging Face language models)
in Rust and taps them itself. A network it does not know gets the metrics
that need only activations through this module: it loads each checkpoint of
a run folder into your model, pushes the run's probe through it with hooks
on the modules you name, and writes one file per checkpoint that
``lintrace-analyze RUN_DIR`` reads (format: docs/pytorch.md; reader:
src/activations.rs)::

    RUN_DIR/
      probe.safetensors
      checkpoints/step_XXXXXXXX.safetensors   (LogSpacedCheckpoints, spec=None)
      activations/step_XXXXXXXX.safetensors   (this module)

A tap is an elementwise nonlinearity module: its input is z, its output a.
Give it as the module (or its dotted name), or as ``(layer, activation)``
with the ``nn.Linear``/``nn.Conv2d`` that feeds it, which adds that layer's
input (for ``block_linear_fit``) and weight (for ``weights``).
"""

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from safetensors import safe_open
from torch import nn

from .checkpoints import PACKAGE_VERSION, _replace_atomic, checkpoint_name, load_state_dict

__all__ = ["capture_activations", "activation_bytes", "FORMAT", "FORMAT_VERSION"]

FORMAT = "lintrace.activations"
FORMAT_VERSION = "1"
DIR = "activations"

ModuleRef = Union[str, nn.Module]
TapSpec = Union[ModuleRef, Tuple[ModuleRef, ModuleRef]]

_NAMES = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.SiLU: "silu", nn.Tanh: "tanh", nn.Identity: "identity"}


def _activation_name(m: nn.Module) -> str:
    """The layout's name of an activation module: lintrace's for those it
    knows, else the class name in lower case (``sigmoid``, ``hardswish``)."""
    if isinstance(m, nn.GELU):
        return "gelu_tanh" if getattr(m, "approximate", "none") == "tanh" else "gelu"
    for cls, name in _NAMES.items():
        if isinstance(m, cls):
            return name
    return type(m).__name__.lower()


def _module(model: nn.Module, ref: ModuleRef, what: str) -> Tuple[str, nn.Module]:
    if isinstance(ref, str):
        try:
            return ref, model.get_submodule(ref)
        except AttributeError as e:
            raise ValueError(f"{what} {ref!r}: no such submodule of {type(model).__name__}") from e
    if not isinstance(ref, nn.Module):
        raise TypeError(f"{what}: expected a module or its dotted name, got {type(ref).__name__}")
    for name, m in model.named_modules():
        if m is ref:
            return name, m
    raise ValueError(f"{what}: the module is not part of the model")


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _layer_layout(name: str, layer: nn.Module, x_shape: Sequence[int], out_shape: Sequence[int]) -> Tuple[Optional[dict], str]:
    """The layout of the affine layer feeding a tap, from the shapes it saw
    (per sample), or (None, why) when lintrace cannot describe it."""
    if isinstance(layer, nn.Linear):
        if len(x_shape) == 1:
            d = {"kind": "dense", "name": name, "in_features": layer.in_features, "out_features": layer.out_features}
        elif len(x_shape) == 2:
            d = {"kind": "dense", "name": name, "in_features": layer.in_features, "out_features": layer.out_features,
                 "positions": int(x_shape[0])}
        else:
            return None, f"nn.Linear {name} sees per-sample input {list(x_shape)}; lintrace fits [features] or [positions, features]"
        return d, ""
    if isinstance(layer, nn.Conv2d):
        k, s, d = _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.dilation)
        p = layer.padding
        if isinstance(p, str):
            p = (0, 0) if p == "valid" else None
        p = _pair(p) if p is not None else None
        if k[0] != k[1] or s[0] != s[1] or d != (1, 1) or p is None or p[0] != p[1] or layer.padding_mode != "zeros":
            return None, f"nn.Conv2d {name}: lintrace fits square kernels with one stride and padding, no dilation, zero padding"
        if len(x_shape) != 3:
            return None, f"nn.Conv2d {name} sees per-sample input {list(x_shape)}"
        c, h, w = (int(v) for v in x_shape)
        return {"kind": "conv2d", "name": name, "in_channels": c, "height": h, "width": w, "kernel": int(k[0]),
                "stride": int(s[0]), "padding": int(p[0]), "groups": int(layer.groups),
                "out_channels": int(out_shape[0]), "out_height": int(out_shape[1]), "out_width": int(out_shape[2])}, ""
    return None, f"{name} is a {type(layer).__name__}; lintrace describes nn.Linear and nn.Conv2d layers"


def _layer_output_shape(layout: dict) -> List[int]:
    if layout["kind"] == "dense":
        return ([layout["positions"]] if "positions" in layout else []) + [layout["out_features"]]
    return [layout["out_channels"], layout["out_height"], layout["out_width"]]


def _weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The weight as [out, fan_in] (a convolution's kernel flattened)."""
    w = layer.weight.detach().to(torch.float32).cpu()
    return w.reshape(w.shape[0], -1).contiguous()


def _logits(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(f"the model returned {type(out).__name__}; expected logits (a tensor, a tuple starting with one, or .logits)")


def _attention_weights(out) -> torch.Tensor:
    """A module's attention weights: its output, or (as nn.MultiheadAttention
    with need_weights=True, average_attn_weights=False) its second output."""
    if isinstance(out, (tuple, list)):
        out = out[1] if len(out) > 1 else out[0]
        if out is None:
            raise ValueError("the attention module returned no weights: call nn.MultiheadAttention with "
                             "need_weights=True, average_attn_weights=False, or hook a module whose output is the weights")
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[-1] != out.shape[-2]:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"attention weights must be [batch, heads, queries, keys] with queries = keys, got {shape}")
    return out


class _Recorder:
    """Hooks on the taps, layers and attention modules of one model; each
    forward pass records one value per hook, in forward order."""

    def __init__(self, model, taps, attention, inputs):
        self.handles = []
        self.order: List[Tuple[str, int]] = []
        self.taps: List[dict] = []
        seen = {}
        for tname, spec in taps.items():
            layer_ref, act_ref = spec if isinstance(spec, tuple) else (None, spec)
            aname, act = _module(model, act_ref, f"tap {tname!r}")
            lname, layer = _module(model, layer_ref, f"tap {tname!r} layer") if layer_ref is not None else (None, None)
            if id(act) in seen:
                raise ValueError(f"taps {seen[id(act)]!r} and {tname!r} are the same module: give each place its own module")
            seen[id(act)] = tname
            self.taps.append({"name": tname, "module": act, "layer_name": lname, "layer": layer})
        self.attention = []
        for aname, ref in (attention or {}).items():
            _, m = _module(model, ref, f"attention {aname!r}")
            self.attention.append({"name": aname, "module": m})
        self.inputs = inputs
        self.reset()
        for i, t in enumerate(self.taps):
            self.handles.append(t["module"].register_forward_pre_hook(self._pre(i)))
            self.handles.append(t["module"].register_forward_hook(self._post(i)))
            if t["layer"] is not None:
                self.handles.append(t["layer"].register_forward_pre_hook(self._layer(i)))
        for j, a in enumerate(self.attention):
            self.handles.append(a["module"].register_forward_hook(self._att(j)))

    def reset(self):
        self.z = [[] for _ in self.taps]
        self.a = [[] for _ in self.taps]
        self.x = [[] for _ in self.taps]
        self.w = [[] for _ in self.attention]
        self.order = []

    def _pre(self, i):
        def hook(module, args):
            # A clone: an in-place activation (ReLU(inplace=True)) overwrites its input.
            self.z[i].append(args[0].detach().clone())
        return hook

    def _post(self, i):
        def hook(module, args, out):
            # A clone: a later in-place operation may overwrite the output.
            self.a[i].append(out.detach().clone())
            self.order.append(("tap", i))
        return hook

    def _layer(self, i):
        def hook(module, args):
            self.x[i].append(args[0].detach().clone())
        return hook

    def _att(self, j):
        def hook(module, args, out):
            self.w[j].append(_attention_weights(out).detach())
            self.order.append(("attention", j))
        return hook

    def check_once(self):
        """Each hooked module must run exactly once per forward pass."""
        for i, t in enumerate(self.taps):
            if len(self.a[i]) != 1:
                raise RuntimeError(f"tap {t['name']!r} ran {len(self.a[i])} times in one forward pass "
                                   "(an activation module reused at several places, or one the forward pass never calls: "
                                   "give each place its own module)")
            if t["layer"] is not None and len(self.x[i]) != 1:
                raise RuntimeError(f"tap {t['name']!r}: its layer {t['layer_name']!r} ran {len(self.x[i])} times in one forward pass")
        for j, a in enumerate(self.attention):
            if len(self.w[j]) != 1:
                raise RuntimeError(f"attention {a['name']!r} ran {len(self.w[j])} times in one forward pass")

    def remove(self):
        for h in self.handles:
            h.remove()


def _layout(model, rec: _Recorder, logits: torch.Tensor, n_labels_per_sample: int, causal: List[bool]) -> Tuple[dict, List[str]]:
    """The layout of the taps from the first batch's recorded values."""
    warnings = []
    taps = []
    for i, t in enumerate(rec.taps):
        shape = [int(v) for v in rec.z[i][0].shape[1:]]
        if list(rec.a[i][0].shape[1:]) != shape:
            raise ValueError(f"tap {t['name']!r}: its module changes the shape ({shape} → {list(rec.a[i][0].shape[1:])}); "
                             "a tap is an elementwise nonlinearity")
        entry = {"name": t["name"], "activation": _activation_name(t["module"]), "module": type(t["module"]).__name__,
                 "shape": shape}
        if t["layer"] is not None:
            x_shape = [int(v) for v in rec.x[i][0].shape[1:]]
            lay, why = _layer_layout(t["layer_name"], t["layer"], x_shape, shape)
            if lay is not None and _layer_output_shape(lay) != shape:
                lay, why = None, f"layer {t['layer_name']} gives {_layer_output_shape(lay)}, but tap {t['name']!r} sees {shape}"
            if lay is None:
                warnings.append(f"tap {t['name']!r}: {why}; captured without its layer (no block_linear_fit or weights row)")
            else:
                entry["layer"] = lay
        taps.append(entry)
    # An attention layer's rows sit at the depth of the first tap after it.
    att = []
    for j, a in enumerate(rec.attention):
        pos = rec.order.index(("attention", j))
        later = [i for kind, i in rec.order[pos:] if kind == "tap"]
        w = rec.w[j][0]
        att.append({"name": a["name"], "heads": int(w.shape[1]), "positions": int(w.shape[2]), "causal": causal[j],
                    "tap": later[0] if later else len(taps) - 1})
    layout = {
        "taps": taps,
        "attention": att,
        "num_classes": int(logits.shape[-1]),
        "predictions_per_sample": n_labels_per_sample,
        "n_parameters": sum(int(p.numel()) for p in model.parameters()),
        "model": type(model).__name__,
    }
    return layout, warnings


def _save_atomic(path: Path, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> None:
    """Writes a safetensors file straight to disk (no in-memory copy of the
    file: a convolutional capture is gigabytes), atomically."""
    from safetensors.torch import save_file

    _replace_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def activation_bytes(layout: dict, n: int, dtype: torch.dtype = torch.float32, inputs: bool = True) -> int:
    """Bytes of one activations file: per probe sample, z and a of every tap,
    its layer's input (``inputs``), the attention weights and the logits;
    the weights once."""
    size = torch.tensor([], dtype=dtype).element_size()
    per = 0
    weights = 0
    for t in layout["taps"]:
        units = math.prod(t["shape"])
        per += 2 * units * size
        lay = t.get("layer")
        if lay is not None:
            if lay["kind"] == "dense":
                x = lay["in_features"] * lay.get("positions", 1)
                weights += lay["in_features"] * lay["out_features"] * 4
            else:
                x = lay["in_channels"] * lay["height"] * lay["width"]
                weights += lay["out_channels"] * lay["in_channels"] // lay["groups"] * lay["kernel"] ** 2 * 4
            per += x * size if inputs else 0
    for a in layout["attention"]:
        per += a["heads"] * a["positions"] ** 2 * size
    per += layout["num_classes"] * layout["predictions_per_sample"] * 4
    return n * per + weights


def _read_probe(run_dir: Path):
    path = run_dir / "probe.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (write it with LogSpacedCheckpoints(probe=...) or lintrace.write_probe)")
    with safe_open(str(path), "pt") as f:
        md = f.metadata() or {}
        return f.get_tensor("inputs"), f.get_tensor("labels"), md.get("hash", "")


def capture_activations(run_dir: Union[str, Path], model: nn.Module, taps: Dict[str, TapSpec],
                        attention: Optional[Dict[str, ModuleRef]] = None, *, steps: Optional[Sequence[int]] = None,
                        dtype: torch.dtype = torch.float32, inputs: bool = True, batch_size: int = 256,
                        device: Optional[Union[str, torch.device]] = None, overwrite: bool = False,
                        verbose: bool = True) -> List[Path]:
    """Pushes the run's probe through each checkpoint of ``run_dir`` with
    hooks on ``taps`` (and ``attention``) and writes
    ``run_dir/activations/step_XXXXXXXX.safetensors`` per checkpoint.

    ``model``: an instance of the architecture the checkpoints hold (its
    weights are replaced by each checkpoint's in turn). ``taps``: name →
    activation module, or name → ``(layer, activation)``; modules or their
    dotted names, in forward order. ``attention``: name → a module whose
    output is the attention weights ``[batch, heads, queries, keys]`` (an
    ``nn.Identity`` or dropout applied to the softmax, or an
    ``nn.MultiheadAttention`` called with ``need_weights=True,
    average_attn_weights=False``). ``dtype``: of the stored activations
    (``torch.float16`` halves the files; lintrace computes in f32/f64
    either way). ``inputs``: store each layer's input (only
    ``block_linear_fit`` reads it; a convolution's input is as large as its
    output). ``steps``: which checkpoints (default all); files that exist
    are kept unless ``overwrite``. Returns the files written.
    """
    run_dir = Path(run_dir)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32, float16 or bfloat16, not {dtype}")
    x_all, y_all, probe_hash = _read_probe(run_dir)
    n = int(x_all.shape[0])
    per = int(y_all[0].numel()) if y_all.dim() > 1 else 1
    ckpt_dir = run_dir / "checkpoints"
    available = sorted(int(p.name[5:-12]) for p in ckpt_dir.glob("step_*.safetensors")) if ckpt_dir.is_dir() else []
    wanted = available if steps is None else sorted(int(s) for s in steps)
    missing = [s for s in wanted if s not in available]
    if missing:
        raise FileNotFoundError(f"{ckpt_dir}: no checkpoint for steps {missing}")
    out_dir = run_dir / DIR
    todo = [s for s in wanted if overwrite or not (out_dir / checkpoint_name(s)).exists()]
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    rec = _Recorder(model, taps, attention, inputs)
    written = []
    layout = None
    try:
        model.eval()
        for step in todo:
            path = ckpt_dir / checkpoint_name(step)
            with safe_open(str(path), "pt") as f:
                run_id = (f.metadata() or {}).get("run_id", "")
            state = load_state_dict(path)
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                raise RuntimeError(f"{path}: does not fit the model: {e}") from e
            # Whole-probe buffers, allocated at the first batch and filled
            # in place: no list of chunks and concatenated copy beside them.
            buf = {}

            def put(name, value, start, rows, total, as_dtype=dtype):
                value = value.detach().to(as_dtype).cpu()
                if name not in buf:
                    buf[name] = torch.empty((total,) + tuple(value.shape[1:]), dtype=as_dtype)
                buf[name][start:start + rows] = value

            causal = [True] * len(rec.attention)
            first_batch = None
            with torch.no_grad():
                for start in range(0, n, batch_size):
                    rec.reset()
                    out = _logits(model(x_all[start:start + batch_size].to(dev)))
                    rec.check_once()
                    b = min(batch_size, n - start)
                    if out.shape[0] != b or out.numel() != b * per * out.shape[-1]:
                        raise ValueError(f"the model's logits have shape {list(out.shape)}; expected [{b}, classes]"
                                         + (f" or [{b}, {per}, classes]" if per > 1 else ""))
                    put("logits", out.reshape(b * per, -1), start * per, b * per, n * per, torch.float32)
                    for i in range(len(rec.taps)):
                        put(f"taps.{i}.z", rec.z[i][0], start, b, n)
                        put(f"taps.{i}.a", rec.a[i][0], start, b, n)
                        if inputs and rec.x[i]:
                            put(f"taps.{i}.input", rec.x[i][0], start, b, n)
                    for j in range(len(rec.attention)):
                        wt = rec.w[j][0]
                        causal[j] = causal[j] and bool((wt.triu(1) == 0).all())
                        put(f"attention.{j}", wt, start, b, n)
                    if first_batch is None:
                        first_batch = (rec.order[:], [t[:] for t in rec.z], [t[:] for t in rec.a], [t[:] for t in rec.x],
                                       [t[:] for t in rec.w], out)
            # The layout, from the first step's first batch (and attention's causality over the whole probe).
            if layout is None:
                order, rz, ra, rx, rw, out0 = first_batch
                rec.order, rec.z, rec.a, rec.x, rec.w = order, rz, ra, rx, rw
                layout, warnings = _layout(model, rec, out0, per, causal)
                existing = sorted(out_dir.glob("step_*.safetensors")) if out_dir.is_dir() else []
                for old in existing:
                    if old.name in {checkpoint_name(s) for s in todo}:
                        continue
                    with safe_open(str(old), "pt") as f:
                        old_layout = json.loads((f.metadata() or {}).get("layout", "null"))
                    if old_layout != layout:
                        raise ValueError(f"{old}: captured with another layout (other taps?); pass overwrite=True "
                                         "and every step, or another run folder")
                    break
                if verbose:
                    for line in warnings:
                        print(f"lintrace: {line}")
                    size = activation_bytes(layout, n, dtype, inputs)
                    print(f"lintrace: {len(layout['taps'])} taps, {len(layout['attention'])} attention layers; "
                          f"{size / 2**20:.1f} MiB per checkpoint, {len(todo)} checkpoints")
            tensors = {"logits": buf["logits"]}
            for i, t in enumerate(layout["taps"]):
                tensors[f"taps.{i}.z"] = buf[f"taps.{i}.z"]
                tensors[f"taps.{i}.a"] = buf[f"taps.{i}.a"]
                if "layer" in t:
                    if inputs:
                        tensors[f"taps.{i}.input"] = buf[f"taps.{i}.input"]
                    tensors[f"taps.{i}.weight"] = _weight_matrix(rec.taps[i]["layer"])
            for j in range(len(rec.attention)):
                tensors[f"attention.{j}"] = buf[f"attention.{j}"]
            for name, t in tensors.items():
                if not torch.isfinite(t).all():
                    raise ValueError(f"step {step}: {name} holds NaN or infinite values (a diverged checkpoint?)")
            md = {"format": FORMAT, "format_version": FORMAT_VERSION, "run_id": run_id or run_dir.resolve().name,
                  "step": str(step), "probe_hash": probe_hash, "n": str(n),
                  "layout": json.dumps(layout, separators=(",", ":")), "writer": f"lintrace-python {PACKAGE_VERSION}"}
            target = out_dir / checkpoint_name(step)
            _save_atomic(target, tensors, md)
            del buf, tensors
            written.append(target)
    finally:
        rec.remove()
        model.train(was_training)
    return written
