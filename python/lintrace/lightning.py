"""Lightning: checkpoints at lintrace's log-spaced steps.

``LogSpacedCheckpoint(dirpath, probe=(x, y))`` saves the LightningModule's
state dict at step 0 and at the log-spaced optimizer steps
(``trainer.global_step``) into a lintrace run folder (``run.json``,
``probe.safetensors``, ``checkpoints/``), which ``lintrace-analyze DIRPATH``
analyses. Imports ``lightning`` (or, failing that, ``pytorch_lightning``).
"""

from typing import Optional, Tuple

import torch

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older package name
    from pytorch_lightning.callbacks import Callback

from .checkpoints import LogSpacedCheckpoints, optimizer_config

__all__ = ["LogSpacedCheckpoint"]


class LogSpacedCheckpoint(Callback):
    def __init__(self, dirpath: str, probe: Tuple[torch.Tensor, torch.Tensor], per_decade: float = 8, *,
                 per_octave: float = 0, every: int = 0, run_id: Optional[str] = None, spec="auto",
                 config: Optional[dict] = None):
        super().__init__()
        self.dirpath, self.probe = dirpath, probe
        self.per_decade, self.per_octave, self.every = per_decade, per_octave, every
        self.run_id, self.spec, self.config = run_id, spec, config
        self.ckpt: Optional[LogSpacedCheckpoints] = None

    def _total(self, trainer) -> Optional[int]:
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return int(trainer.max_steps)
        try:
            total = trainer.estimated_stepping_batches
        except Exception:
            return None
        return int(total) if total != float("inf") else None

    def on_train_start(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        config = optimizer_config(trainer.optimizers[0]) if trainer.optimizers else {}
        config.update(self.config or {})
        self.ckpt = LogSpacedCheckpoints(
            pl_module, self.dirpath, self.per_decade, probe=self.probe, total_steps=self._total(trainer),
            run_id=self.run_id, per_octave=self.per_octave, every=self.every, spec=self.spec, config=config,
            # a resumed fit (ckpt_path=...) continues the folder; a new one replaces it
            existing="resume" if trainer.global_step > 0 else "overwrite")
        if trainer.global_step == 0:
            self.ckpt.step(0, epoch=0.0, samples_seen=0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # global_step counts optimizer steps; with gradient accumulation this
        # hook sees the same step several times, and step() saves it once.
        if self.ckpt is not None:
            self.ckpt.step(int(trainer.global_step), epoch=float(trainer.current_epoch))

    def on_train_end(self, trainer, pl_module):
        if self.ckpt is not None:
            self.ckpt.finish(int(trainer.global_step), epoch=float(trainer.current_epoch))
