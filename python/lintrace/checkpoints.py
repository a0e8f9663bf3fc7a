"""Writing a lintrace run folder from a PyTorch training loop.

Layout (the one ``lintrace-train`` writes, src/run.rs)::

    RUN_DIR/
      run.json                              only when the spec is known
      probe.safetensors                     inputs f32, labels i64, indices i64
      checkpoints/step_XXXXXXXX.safetensors

With a spec, every checkpoint carries lintrace's metadata
(``format = lintrace.checkpoint``, spec, run_id, step, epoch, samples_seen)
and tensors under lintrace's names, and run.json makes the folder a run:
``lintrace-analyze RUN_DIR`` with no flags. Without one, the checkpoints
hold the state dict under its own names with the run id and step, and
``lintrace-analyze RUN_DIR/checkpoints --spec SPEC --probe
RUN_DIR/probe.safetensors --run-id ID`` analyses them.
"""

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from safetensors.torch import load_file, save

from .schedule import Schedule
from .spec import infer_spec, num_taps

__all__ = ["LogSpacedCheckpoints", "write_probe", "probe_hash", "load_state_dict", "checkpoint_name", "optimizer_config"]

CHECKPOINT_FORMAT = "lintrace.checkpoint"
PROBE_FORMAT = "lintrace.probe"
# The dataset name run.json gives a run trained outside lintrace: lintrace
# does not reload its data (src/analysis/target.rs, EXTERNAL_DATASET).
EXTERNAL_DATASET = "external"
PACKAGE_VERSION = "0.1.0"


def checkpoint_name(step: int) -> str:
    """``step_00000042.safetensors``, as src/checkpoint.rs names them."""
    return f"step_{step:08d}.safetensors"


def _replace_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Has ``write`` write a temporary file in ``path``'s folder, syncs it,
    then renames it into place: never a partial file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _write_atomic(path: Path, data: bytes) -> None:
    _replace_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def probe_hash(inputs: torch.Tensor, labels: torch.Tensor) -> str:
    """First 16 hex digits of sha256(inputs as f32 LE || labels as i64 LE): src/probe.rs."""
    h = hashlib.sha256()
    h.update(inputs.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes())
    h.update(labels.detach().cpu().to(torch.int64).contiguous().numpy().astype("<i8", copy=False).tobytes())
    return h.hexdigest()[:16]


def write_probe(path: Union[str, Path], inputs: torch.Tensor, labels: torch.Tensor, indices: Optional[torch.Tensor] = None,
                dataset: str = EXTERNAL_DATASET, split: str = "probe") -> str:
    """Writes a probe file as lintrace reads it; returns its hash. Integer
    inputs (token ids) are kept as int64, which lintrace reads too."""
    integer = not inputs.is_floating_point() and not inputs.is_complex()
    # Copies: safetensors refuses tensors that share memory (inputs and labels
    # may be views of one token tensor).
    x = inputs.detach().cpu().to(torch.int64 if integer else torch.float32).contiguous().clone()
    y = labels.detach().cpu().to(torch.int64).contiguous().clone()
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"probe has {x.shape[0]} inputs but {y.shape[0]} labels")
    if not torch.isfinite(x).all():
        raise ValueError("probe inputs must be finite")
    n = x.shape[0]
    idx = torch.arange(n, dtype=torch.int64) if indices is None else indices.detach().cpu().to(torch.int64).contiguous().clone()
    digest = probe_hash(x, y)
    md = {"format": PROBE_FORMAT, "format_version": "1", "hash": digest, "dataset": dataset, "split": split, "n": str(n)}
    _write_atomic(Path(path), save({"inputs": x, "labels": y, "indices": idx}, metadata=md))
    return digest


def _read_probe_hash(path: Path) -> Optional[str]:
    t = load_file(str(path))
    return probe_hash(t["inputs"], t["labels"])


def load_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """A checkpoint written here, under the model's own state-dict names
    (files renamed for lintrace record the original names), ready for
    ``model.load_state_dict``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        md = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    names = json.loads(md.get("torch_names", "{}"))  # lintrace name -> torch name
    return {names.get(k, k): v for k, v in tensors.items()}


def optimizer_config(opt) -> dict:
    """run.json config keys (lintrace-train's) for a torch optimizer: its
    kind, learning rate (of the first parameter group), weight decay,
    momentum or betas; {} for other optimizers."""
    name = type(opt).__name__.lower()
    if name not in ("sgd", "adam", "adamw") or not opt.param_groups:
        return {}
    g = opt.param_groups[0]
    cfg = {"lr": float(g["lr"]), "weight_decay": float(g.get("weight_decay", 0.0))}
    if name == "sgd":
        momentum = float(g.get("momentum", 0.0))
        cfg["optimizer"] = "momentum" if momentum > 0 else "sgd"
        cfg["momentum"] = momentum
    else:
        cfg["optimizer"] = name
        b1, b2 = g.get("betas", (0.9, 0.999))
        cfg["adam_beta1"], cfg["adam_beta2"] = float(b1), float(b2)
    return cfg


def _load_spec(spec) -> Optional[dict]:
    if spec is None or isinstance(spec, dict):
        return spec
    p = Path(spec)
    return json.loads(p.read_text())


class LogSpacedCheckpoints:
    """Saves ``model.state_dict()`` at exactly the steps lintrace's trainer
    checkpoints at (:func:`lintrace.log_spaced_steps`), into a run folder
    lintrace-analyze reads.

    ``ckpt.step(step)`` after each optimizer step (and once with 0 before the
    first) saves when ``step`` is a checkpoint step; ``ckpt.finish(step)`` at
    the end saves the final step (if ``total_steps`` was not given) and
    marks the run finished.

    ``probe``: ``(inputs, labels)``, held-out samples in the form the model
    takes (normalised as in training); written once. ``spec``: ``"auto"``
    recognises an MLP (:func:`lintrace.spec.infer_spec`); a dict or a JSON
    file path gives any lintrace spec (the state dict's names must then be
    lintrace's, docs/model-spec.md); None writes no spec. ``config``: keys of
    lintrace-train's config to record in run.json (``lr``, ``batch_size``,
    ``optimizer`` as ``sgd|momentum|adam|adamw``, ``seed``, ...).
    ``existing``: what to do when ``run_dir`` already holds checkpoints
    (``"error"``, ``"overwrite"``, ``"resume"``), as lintrace-train's
    ``--overwrite`` and ``--resume``.
    """

    def __init__(self, model: torch.nn.Module, run_dir: Union[str, Path], per_decade: float = 8,
                 probe: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, total_steps: Optional[int] = None,
                 run_id: Optional[str] = None, *, per_octave: float = 0, every: int = 0, spec="auto",
                 config: Optional[dict] = None, existing: str = "error"):
        self.model = model
        self.run_dir = Path(run_dir)
        self.run_id = run_id or self.run_dir.resolve().name
        self.total_steps = total_steps
        self.schedule = Schedule(total_steps, per_decade, per_octave, every)
        self.per_decade, self.per_octave, self.every = per_decade, per_octave, every
        self.user_config = dict(config or {})
        self.saved: Dict[int, str] = {}
        self.started = int(time.time())
        self._t0 = time.monotonic()
        self.status = "running"
        self.ckpt_dir = self.run_dir / "checkpoints"
        self._existing(existing)
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)

        self.probe_hash = None
        self.probe_size = 0
        self.input_shape = None
        if probe is not None:
            x, y = probe
            path = self.run_dir / "probe.safetensors"
            h = probe_hash(x, y)
            if path.exists() and _read_probe_hash(path) != h:
                raise ValueError(f"{path}: holds another probe (remove the folder or use another run_dir)")
            if not path.exists():
                write_probe(path, x, y)
            self.probe_hash, self.probe_size = h, int(x.shape[0])
            self.input_shape = [int(d) for d in x.shape[1:]]

        self.names: Dict[str, str] = {}
        if isinstance(spec, str) and spec == "auto":
            found = infer_spec(model, probe[0]) if probe is not None else None
            self.spec, self.names = found if found else (None, {})
        else:
            self.spec = _load_spec(spec)
        if self.spec is not None and probe is None:
            raise ValueError("a run folder lintrace analyses needs a probe: pass probe=(inputs, labels)")
        if self.spec is not None:
            self._write_manifest()

    def _existing(self, mode: str) -> None:
        """A folder that already holds checkpoints: "error" (the default)
        refuses it, "overwrite" removes them and run.json, "resume" keeps
        them (and run.json's record of them) and goes on."""
        if mode not in ("error", "overwrite", "resume"):
            raise ValueError(f"existing must be 'error', 'overwrite' or 'resume', not {mode!r}")
        old = sorted(self.ckpt_dir.glob("step_*.safetensors")) if self.ckpt_dir.is_dir() else []
        manifest = self.run_dir / "run.json"
        if mode == "error" and old:
            raise FileExistsError(f"{self.ckpt_dir}: already holds {len(old)} checkpoints "
                                  "(pass existing='overwrite' to replace them or existing='resume' to continue)")
        if mode == "overwrite":
            for p in old:
                p.unlink()
            for p in (manifest, self.run_dir / "probe.safetensors"):
                if p.exists():
                    p.unlink()
        if mode == "resume" and manifest.is_file():
            m = json.loads(manifest.read_text())
            if m.get("run_id") == self.run_id:
                self.started = int(m.get("started_unix", self.started))
                self.saved = {int(k): v for k, v in m.get("checkpoint_sha256", {}).items()
                              if (self.ckpt_dir / checkpoint_name(int(k))).is_file()}

    @property
    def known(self) -> bool:
        """Whether lintrace knows the architecture (run.json is written)."""
        return self.spec is not None

    def step(self, step: int, *, epoch: Optional[float] = None, samples_seen: Optional[int] = None) -> bool:
        """Saves a checkpoint if ``step`` is one of the schedule's (once per
        step); returns whether it did."""
        if step in self.saved or step not in self.schedule:
            return False
        self.save(step, epoch=epoch, samples_seen=samples_seen)
        return True

    def save(self, step: int, *, epoch: Optional[float] = None, samples_seen: Optional[int] = None) -> Path:
        """Saves a checkpoint at ``step`` unconditionally."""
        tensors = {}
        for k, v in self.model.state_dict().items():
            if not isinstance(v, torch.Tensor):
                continue
            # clone: safetensors refuses tensors sharing storage (tied weights).
            tensors[self.names.get(k, k)] = v.detach().cpu().contiguous().clone()
        md = {
            "run_id": self.run_id,
            "step": str(int(step)),
            "epoch": repr(float(epoch if epoch is not None else 0.0)),
            "samples_seen": str(int(samples_seen if samples_seen is not None else 0)),
            "writer": f"lintrace-python {PACKAGE_VERSION}",
        }
        if self.spec is not None:
            md.update({"format": CHECKPOINT_FORMAT, "format_version": "1",
                       "spec": json.dumps(self.spec, separators=(",", ":"))})
        if any(k != v for k, v in self.names.items()):
            md["torch_names"] = json.dumps({v: k for k, v in self.names.items()}, separators=(",", ":"))
        data = save(tensors, metadata=md)
        path = self.ckpt_dir / checkpoint_name(int(step))
        _write_atomic(path, data)
        self.saved[int(step)] = hashlib.sha256(data).hexdigest()
        if self.spec is not None:
            self._write_manifest()
        return path

    def finish(self, step: Optional[int] = None, **kw) -> None:
        """End of training: saves ``step`` (the last one taken) if not yet
        saved, and marks run.json finished."""
        if step is not None and step not in self.saved:
            self.save(step, **kw)
        self.status = "finished"
        if self.spec is not None:
            self._write_manifest()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finish()
        else:
            self.status = "failed"
            if self.spec is not None:
                self._write_manifest(error=f"{exc_type.__name__}: {exc}")
        return False

    # run.json (src/run.rs RunManifest): what lintrace-analyze needs to take
    # the folder for a run.
    def _config(self) -> dict:
        cfg = {
            "model": self.spec.get("kind", "external"),
            "dataset": EXTERNAL_DATASET,
            "steps": int(self.total_steps or 0),
            "ckpt_per_decade": float(self.per_decade),
            "ckpt_per_octave": float(self.per_octave),
            "ckpt_every": int(self.every),
            "probe_size": self.probe_size,
            "name": self.run_id,
            "out": str(self.run_dir.resolve().parent),
        }
        if self.spec.get("kind") == "mlp":
            hidden = self.spec.get("hidden", [])
            cfg["activation"] = self.spec.get("activation", "relu")
            cfg["depth"] = len(hidden)
            if hidden and len(set(hidden)) == 1:
                cfg["width"] = hidden[0]
        cfg.update(self.user_config)
        return cfg

    def _write_manifest(self, error: Optional[str] = None) -> None:
        total = self.total_steps
        steps_done = max(self.saved) if self.saved else 0
        if total is not None:
            ckpt_steps = self.schedule.steps()
        else:
            ckpt_steps = sorted(self.saved)
        n_params = sum(int(v.numel()) for v in self.model.state_dict().values()
                       if isinstance(v, torch.Tensor) and v.is_floating_point())
        manifest = {
            "run_id": self.run_id,
            "status": "failed" if error else self.status,
            "lintrace_version": f"python-{PACKAGE_VERSION}",
            "config": self._config(),
            "spec": self.spec,
            "n_parameters": n_params,
            "n_taps": num_taps(self.spec),
            "dataset": {
                "name": EXTERNAL_DATASET,
                "fingerprint": "",
                "classes": [],
                "sample_shape": self.input_shape or list(self.spec.get("input_shape", [])),
                "n_train": 0,
                "n_test": 0,
                "normalisation": None,
            },
            "probe_hash": self.probe_hash or "",
            "probe_size": self.probe_size,
            "total_steps": int(total if total is not None else steps_done),
            "steps_done": steps_done,
            "checkpoint_steps": ckpt_steps,
            "started_unix": self.started,
            "wall_seconds": time.monotonic() - self._t0,
            "error": error,
            "checkpoint_sha256": {str(k): v for k, v in sorted(self.saved.items())},
        }
        _write_atomic(self.run_dir / "run.json", (json.dumps(manifest, indent=2) + "\n").encode())
