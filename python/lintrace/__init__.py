"""lintrace for PyTorch users: log-spaced checkpoints from your own training
loop, Hugging Face ``Trainer`` (:mod:`lintrace.hf`) or Lightning
(:mod:`lintrace.lightning`), in the run-folder layout ``lintrace-analyze``
reads; activations of any architecture captured for it
(:func:`capture_activations`); and its tables loaded with polars
(:mod:`lintrace.tables`).

The schedule and the tables need neither torch nor safetensors, so
``import lintrace`` works without them (the wheel's commands need no Python
packages at all); the names that need torch are imported when first used,
and without torch they say how to get it."""

import importlib

from .schedule import Schedule, is_log_spaced_step, log_spaced_steps

__version__ = "0.1.0"

# Name -> module, imported on first use (PEP 562).
_LAZY = {
    "LogSpacedCheckpoints": ".checkpoints",
    "write_probe": ".checkpoints",
    "probe_hash": ".checkpoints",
    "load_state_dict": ".checkpoints",
    "checkpoint_name": ".checkpoints",
    "optimizer_config": ".checkpoints",
    "infer_spec": ".spec",
    "capture_activations": ".activations",
    "activation_bytes": ".activations",
}

__all__ = ["log_spaced_steps", "is_log_spaced_step", "Schedule", *_LAZY]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lintrace' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module, __name__), name)
    except ModuleNotFoundError as e:
        if e.name not in ("torch", "safetensors"):
            raise
        raise ModuleNotFoundError(
            f"lintrace.{name} needs {e.name} (not installed): pip install 'lintrace[torch]'. "
            "The lintrace-train, lintrace-analyze and lintrace-query commands, lintrace.log_spaced_steps "
            "and lintrace.tables need neither torch nor safetensors.",
            name=e.name) from e
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
