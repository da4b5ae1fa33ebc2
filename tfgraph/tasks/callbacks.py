"""Lightning callbacks of every tfgraph run: a resumable ``last.ckpt`` and a validation after the last step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


def is_last_step(trainer: pl.Trainer) -> bool:
    """Whether the optimizer step just taken is the run's last (``max_steps``, or the last epoch's last batch)."""
    if 0 < trainer.max_steps <= trainer.global_step:
        return True
    last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs > 0
    return last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


class LastCheckpoint(Callback):
    """Save ``<dirpath>/last.ckpt`` at the end of a training step, every ``every_n_train_steps`` and after the last.

    Saved at the end of a training batch, the checkpoint is one Lightning resumes exactly: at the same step,
    in the next epoch when it was the epoch's last batch. (``ModelCheckpoint(save_last=True)`` saves during
    validation instead, and a run resumed from there at an epoch's end trains one more batch of the finished
    epoch.) Mid-epoch, a run continues exactly when its training loader is resumable (has ``state_dict``);
    Lightning warns otherwise.

    Args:
        dirpath: the checkpoint folder.
        every_n_train_steps: steps between saves.
    """

    def __init__(self, *, dirpath: str, every_n_train_steps: int = 250) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be at least 1, got {every_n_train_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        if trainer.global_step % self.every_n_train_steps == 0 or is_last_step(trainer):
            trainer.save_checkpoint(self.path, weights_only=False)


class ValidateAtLastStep(Callback):
    """Validate after the last training step too, so that a run's final metrics describe its final weights.

    (Lightning validates every ``val_check_interval`` steps and when asked to stop; this asks at the end.)
    """

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if is_last_step(trainer):
            trainer.should_stop = True
