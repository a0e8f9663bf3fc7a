"""lintrace for PyTorch users: log-spaced checkpoints from your own training
loop, Hugging Face ``Trainer`` (:mod:`lintrace.hf`) or Lightning
(:mod:`lintrace.lightning`), in the run-folder layout ``lintrace-analyze``
reads. The core needs only torch and safetensors; the framework callbacks
import their framework when their module is imported."""

from .schedule import Schedule, is_log_spaced_step, log_spaced_steps

try:
    from .checkpoints import LogSpacedCheckpoints, checkpoint_name, load_state_dict, optimizer_config, probe_hash, write_probe
    from .spec import infer_spec
    from .activations import activation_bytes, capture_activations
except ModuleNotFoundError as e:
    # The wheel's commands need no Python packages, so `pip install lintrace`
    # does not bring PyTorch; say how to get it rather than fail on `import torch`.
    if e.name not in ("torch", "safetensors"):
        raise
    raise ModuleNotFoundError(
        f"lintrace's Python package needs {e.name} (not installed): pip install 'lintrace[torch]'. "
        "The lintrace-train, lintrace-analyze and lintrace-query commands need neither torch nor safetensors.",
        name=e.name) from e

__version__ = "0.1.0"

__all__ = [
    "log_spaced_steps",
    "is_log_spaced_step",
    "Schedule",
    "LogSpacedCheckpoints",
    "write_probe",
    "probe_hash",
    "load_state_dict",
    "checkpoint_name",
    "optimizer_config",
    "infer_spec",
    "capture_activations",
    "activation_bytes",
]
