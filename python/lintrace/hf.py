"""Hugging Face ``Trainer``: checkpoints at lintrace's log-spaced steps.

``LogSpacedCallback`` sets ``control.should_save`` at the log-spaced steps,
so the Trainer writes its own ``checkpoint-N/`` folders there (use
``save_strategy="no"`` so that it writes no others), and writes the same
steps, plus step 0, into a lintrace run folder (default: the Trainer's
``output_dir``: ``run.json``, ``probe.safetensors``, ``checkpoints/``),
which ``lintrace-analyze OUTPUT_DIR`` analyses.
"""

import warnings
from typing import Optional, Tuple

import torch
from transformers import TrainerCallback

from .checkpoints import LogSpacedCheckpoints

__all__ = ["LogSpacedCallback"]

# Trainer's `optim` names -> lintrace-train's optimizer names (run.json).
_OPTIM = {"adamw": "adamw", "adam": "adam", "sgd": "sgd"}


class _Ranked:
    """What processes other than the main one keep: the schedule only."""

    def __init__(self, schedule):
        self.schedule = schedule


class LogSpacedCallback(TrainerCallback):
    def __init__(self, probe: Tuple[torch.Tensor, torch.Tensor], per_decade: float = 8, *, per_octave: float = 0,
                 every: int = 0, run_dir: Optional[str] = None, run_id: Optional[str] = None, spec="auto",
                 trainer_checkpoints: bool = True):
        self.probe = probe
        self.per_decade, self.per_octave, self.every = per_decade, per_octave, every
        self.run_dir, self.run_id, self.spec = run_dir, run_id, spec
        self.trainer_checkpoints = trainer_checkpoints
        self.ckpt: Optional[LogSpacedCheckpoints] = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        optim = str(getattr(args, "optim", "")).split(".")[-1].lower()
        config = {
            "lr": float(args.learning_rate),
            "batch_size": int(args.per_device_train_batch_size * max(1, args.gradient_accumulation_steps)
                              * max(1, getattr(args, "world_size", 1))),
            "weight_decay": float(args.weight_decay),
            "seed": int(args.seed),
        }
        for prefix, name in _OPTIM.items():
            if optim.startswith(prefix):
                config["optimizer"] = name
                break
        if self.trainer_checkpoints and str(getattr(args, "save_strategy", "no")).split(".")[-1].lower() != "no":
            warnings.warn("lintrace.hf.LogSpacedCallback: save_strategy is not 'no', so the Trainer also saves "
                          "checkpoint-N/ at its own steps (the lintrace folder holds the log-spaced ones only)")
        if not state.is_world_process_zero:
            from .schedule import Schedule

            self.ckpt = _Ranked(Schedule(int(state.max_steps), self.per_decade, self.per_octave, self.every))
            return
        # A resumed Trainer (resume_from_checkpoint) continues the folder; a
        # new training in the same output_dir replaces it, as the Trainer does.
        self.ckpt = LogSpacedCheckpoints(
            model, self.run_dir or args.output_dir, self.per_decade, probe=self.probe,
            total_steps=int(state.max_steps), run_id=self.run_id, per_octave=self.per_octave,
            every=self.every, spec=self.spec, config=config,
            existing="resume" if state.global_step > 0 else "overwrite")
        if state.global_step == 0 and state.is_world_process_zero:
            self.ckpt.step(0, epoch=0.0, samples_seen=0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        s = state.global_step
        if s in self.ckpt.schedule:
            if self.trainer_checkpoints:
                control.should_save = True  # on every process: the Trainer coordinates its saving
            if state.is_world_process_zero:
                self.ckpt.step(s, epoch=state.epoch or 0.0, samples_seen=self._samples(args, s))
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.ckpt is not None and state.is_world_process_zero:
            self.ckpt.finish(state.global_step, epoch=state.epoch or 0.0, samples_seen=self._samples(args, state.global_step))

    @staticmethod
    def _samples(args, step):
        return int(step * args.per_device_train_batch_size * max(1, args.gradient_accumulation_steps)
                   * max(1, getattr(args, "world_size", 1)))
