"""lintrace for PyTorch users: log-spaced checkpoints from your own training
loop, Hugging Face ``Trainer`` (:mod:`lintrace.hf`) or Lightning
(:mod:`lintrace.lightning`), in the run-folder layout ``lintrace-analyze``
reads. The core needs only torch and safetensors; the framework callbacks
import their framework when their module is imported."""

from .schedule import Schedule, is_log_spaced_step, log_spaced_steps
from .checkpoints import LogSpacedCheckpoints, checkpoint_name, load_state_dict, optimizer_config, probe_hash, write_probe
from .spec import infer_spec

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
]
