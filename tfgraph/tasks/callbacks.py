"""The Lightning callbacks and checkpoint writer of every tfgraph run.

- :class:`AtomicCheckpointIO` writes each checkpoint file whole or not at all: a kill at any moment leaves the
  previous file intact.
- :class:`LastCheckpoint` keeps ``last.ckpt``, the point to resume from, published once its step's metrics are
  logged.
- :class:`StopOnDivergence` stops a run whose loss (or weights) stop being finite, before any checkpoint holds
  them, with :class:`TrainingDiverged`.
- :class:`StepProgressBar`: Rich's bar over the run's steps (``1250/2000``, its rate and time left).
- :class:`ProgressLog` logs ``step N/max_steps``, the loss, the rate and the time left every 30 s (``every_seconds``)
  and each validation's metrics where no progress bar shows (output piped to a file), and why a run stopped
  before ``max_steps``.
- :class:`ValidateAtLastStep` validates after the last step; :class:`ContinueLogs` has the loggers of a run
  resumed into its own dir continue its earlier logs (:mod:`tfgraph.tasks.loggers`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, RichProgressBar
from pytorch_lightning.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

PARTIAL = ".partial"  # the suffix of a file being written; never taken for a checkpoint (not *.ckpt)


def is_last_step(trainer: pl.Trainer) -> bool:
    """Whether the optimizer step just taken is the run's last (``max_steps``, or the last epoch's last batch)."""
    if 0 < trainer.max_steps <= trainer.global_step:
        return True
    last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs > 0
    return last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


# ------------------------------------------------------------------------------------------ writing files whole


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: ``.<name>.partial`` in its folder (hidden, and
    not ``*.ckpt``: a file a kill left is never taken for a checkpoint; the next save of that name overwrites it)."""
    return path.with_name(f".{path.name}{PARTIAL}")


def write_atomically(path: Path, write: Callable[[IO[Any]], None], *, mode: str = "wb", publish: bool = True) -> None:
    """Write ``path`` whole or not at all: ``write(file)`` fills :func:`partial_path` (flushed to disk), which
    then replaces ``path`` in one rename (:func:`publish_file`; ``publish=False`` leaves that for later)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = partial_path(path)
    try:
        with open(temp, mode, **({} if "b" in mode else {"newline": ""})) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if publish:
        publish_file(path)


def publish_file(path: Path) -> None:
    """Rename the written :func:`partial_path` of ``path`` onto ``path`` (one step: a reader, or a kill, sees the
    old file or the new one) and flush the folder's entry to disk."""
    os.replace(partial_path(path), path)
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a platform that cannot open a folder (Windows): the rename is done all the same
        return
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing each file whole or not at all (every checkpoint: ``last.ckpt`` and
    ModelCheckpoint's ``step*.ckpt`` alike).

    Lightning writes a checkpoint in place, or through a temporary file in the system's temp dir that is copied over
    when that is another file system; a kill during the write leaves a truncated checkpoint. Here the bytes go to
    ``.<name>.partial`` beside it, flushed to disk, then renamed onto ``<name>``. Paths with a scheme
    (``s3://...``) are left to Lightning's writer.

    Within ``with checkpoint_io.staged():`` a save writes the temporary file only, and :meth:`publish` renames it
    later (:class:`LastCheckpoint` does, once the metrics of its step are logged).
    """

    def __init__(self) -> None:
        super().__init__()
        self._staging = False
        self._unpublished: set[Path] = set()

    @contextlib.contextmanager
    def staged(self) -> Iterator[None]:
        """Leave the files saved within unpublished, to :meth:`publish` later."""
        self._staging = True
        try:
            yield
        finally:
            self._staging = False

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any | None = None
    ) -> None:
        if "://" in str(path) or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)  # (Lightning refuses storage_options)
            return
        path = Path(path)
        write_atomically(path, lambda file: torch.save(checkpoint, file), publish=not self._staging)
        if self._staging:
            self._unpublished.add(path)

    def publish(self, path: str | os.PathLike[str]) -> None:
        """Rename a checkpoint saved within :meth:`staged` into place (nothing for one already in place)."""
        path = Path(path)
        if path in self._unpublished:
            self._unpublished.discard(path)
            publish_file(path)


# ------------------------------------------------------------------------------------------------- last.ckpt


class LastCheckpoint(Callback):
    """Save ``<dirpath>/last.ckpt`` at the end of a training step, every ``every_n_train_steps`` and after the last.

    Saved at the end of a training batch, the checkpoint is one Lightning resumes exactly: at the same step,
    in the next epoch when it was the epoch's last batch. (``ModelCheckpoint(save_last=True)`` saves during
    validation instead, and a run resumed from there at an epoch's end trains one more batch of the finished
    epoch.) Mid-epoch, a run continues exactly when its training loader is resumable (has ``state_dict``);
    Lightning warns otherwise.

    Lightning logs a step's metrics after the step's ``on_train_batch_end``, where the checkpoint is taken. With
    :class:`AtomicCheckpointIO` the checkpoint is written there but renamed onto ``last.ckpt`` only once those
    metrics are logged (at the next batch's start, after a validation, or at the end of training), so that the
    logs on disk always reach the step of ``last.ckpt`` and a run resumed from it continues them without a gap
    (:class:`ContinueLogs`). A kill in between leaves the previous ``last.ckpt``.

    Args:
        dirpath: the checkpoint folder.
        every_n_train_steps: steps between saves.
    """

    def __init__(self, *, dirpath: str, every_n_train_steps: int = 250) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be at least 1, got {every_n_train_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.saved_step: int | None = None  # the step of the last.ckpt this run wrote
        self._staged: int | None = None  # the step of a checkpoint written but not yet renamed into place
        self._taken: int | None = None  # the step of the last checkpoint taken (accumulating batches repeat it)

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        step = trainer.global_step
        if step == self._taken or not (step % self.every_n_train_steps == 0 or is_last_step(trainer)):
            return
        self._taken = step
        checkpoint_io = trainer.strategy.checkpoint_io
        if isinstance(checkpoint_io, AtomicCheckpointIO):
            with checkpoint_io.staged():
                trainer.save_checkpoint(self.path, weights_only=False)
            self._staged = step
        else:
            trainer.save_checkpoint(self.path, weights_only=False)
            self.saved_step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._publish(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._publish(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._publish(trainer)

    def _publish(self, trainer: pl.Trainer) -> None:
        if self._staged is None:
            return
        for logger in trainer.loggers:  # the metrics up to the checkpoint's step on disk first
            logger.save()
        if trainer.is_global_zero:
            trainer.strategy.checkpoint_io.publish(self.path)
        self.saved_step, self._staged = self._staged, None


class ValidateAtLastStep(Callback):
    """Validate after the last training step too, so that a run's final metrics describe its final weights.

    (Lightning validates every ``val_check_interval`` steps and when asked to stop; this asks at the end.)
    """

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if is_last_step(trainer):
            trainer.should_stop = True


class StepProgressBar(RichProgressBar):
    """Lightning's Rich progress bar counting the run's steps up to ``trainer.max_steps`` (``1250/2000``, the rate
    and the time left) instead of the batches of an epoch, with the epoch beside; an epoch-based run
    (``max_steps: -1``) keeps Lightning's bar. Validation has its own bar, as in Lightning's."""

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self.trainer.max_steps > 0 else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        shown = f"Epoch {current_epoch}" + (f"/{max_epochs - 1}" if max_epochs and max_epochs > 0 else "")
        return f"{shown}, step" if self.trainer.max_steps > 0 else shown

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._show_step(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.max_steps <= 0:
            super().on_train_batch_end(trainer, pl_module, *args)
            return
        if not self.is_disabled and self.train_progress_bar_id is None:  # resumed in the middle of an epoch
            self._initialize_train_progress_bar_id()
        self._show_step(trainer)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def _show_step(self, trainer: pl.Trainer) -> None:
        if trainer.max_steps > 0 and self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, completed=trainer.global_step, visible=True)


class ProgressLog(Callback):
    """Progress a person can read in a log: where no progress bar shows (none configured, or the output piped to
    a file), a line ``step 1250/2000 (62%), loss 1.234, 5.2 steps/s, 2m24s left`` at most every ``every_seconds``
    and at the last step, and after each validation one with its metrics and how long it took
    (``validation at step 1250: val/loss 1.234, val/perplexity 3.43 (4.1 s)``); and, in any run, a line saying
    why it stopped before ``trainer.max_steps`` (early stopping, with the metric it watched, or another callback).

    Args:
        every_seconds: the least time between two step lines (0: a line at every step).
    """

    def __init__(self, *, every_seconds: float = 30.0) -> None:
        if not every_seconds >= 0:
            raise ValueError(f"every_seconds must be a number of seconds >= 0, got {every_seconds!r}")
        self.every_seconds = every_seconds
        self._start = self._last = self._validation_start = 0.0
        self._first_step = 0
        self._logs = False  # whether this process logs the lines: rank 0, and no bar shows

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._first_step = trainer.global_step
        self._logs = trainer.is_global_zero and self._piped(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        if not self._logs:
            return
        now = time.monotonic()
        if now - self._last < self.every_seconds and not is_last_step(trainer):
            return
        self._last = now
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        log.info("%s", progress_line(trainer.global_step, trainer.max_steps, self._first_step, now - self._start, loss))

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_start = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._logs or trainer.sanity_checking:
            return
        seconds = time.monotonic() - self._validation_start
        log.info("%s", validation_line(trainer.global_step, scalars(trainer.callback_metrics, "val/"), seconds))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step, max_steps = trainer.global_step, trainer.max_steps
        if trainer.is_global_zero and 0 < max_steps and step < max_steps:
            log.info("stopped at step %d of %d: %s", step, max_steps, stop_reason(trainer))

    @staticmethod
    def _piped(trainer: pl.Trainer) -> bool:
        return trainer.progress_bar_callback is None or not sys.stdout.isatty()


def progress_line(step: int, max_steps: int, first_step: int, seconds: float, loss: Any = None) -> str:
    """``step 1250/2000 (62%), loss 1.234, 5.2 steps/s, 2m24s left`` (no total, rate or time left where unknown)."""
    parts = [f"step {step}/{max_steps} ({100 * step // max_steps}%)" if max_steps > 0 else f"step {step}"]
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        loss = loss.item()
    if isinstance(loss, float) and math.isfinite(loss):
        parts.append(f"loss {loss:.4g}")
    rate = (step - first_step) / seconds if seconds > 0 else 0.0
    if rate > 0:
        parts.append(f"{rate:.3g} steps/s")
        if max_steps > step:
            parts.append(f"{_duration((max_steps - step) / rate)} left")
    return ", ".join(parts)


def validation_line(step: int, metrics: Mapping[str, float], seconds: float) -> str:
    """``validation at step 1250: val/loss 1.234, val/perplexity 3.43 (4.1 s)``: the metrics sorted by name."""
    shown = ", ".join(f"{name} {value:.4g}" for name, value in sorted(metrics.items()))
    return f"validation at step {step}: {shown or 'no metrics'} ({seconds:.1f} s)"


def scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Lightning's logged metrics (tensors) as floats, those starting with ``prefix``."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if key.startswith(prefix) and (not isinstance(value, torch.Tensor) or value.numel() == 1)
    }


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def stop_reason(trainer: pl.Trainer) -> str:
    """Why ``trainer`` stopped before its ``max_steps``: early stopping and what it watched, or another cause."""
    early = trainer.early_stopping_callback
    if early is not None and early.wait_count >= early.patience:
        best = early.best_score.item() if isinstance(early.best_score, torch.Tensor) else early.best_score
        return (
            f"early stopping: {early.monitor} did not improve for {early.patience} validations "
            f"(best {best:.4g}; callbacks.early_stopping.patience sets how many)"
        )
    return "a callback or the trainer's own limit (trainer.max_epochs, max_time) asked it to stop"


# ------------------------------------------------------------------------------------------------- divergence


class TrainingDiverged(RuntimeError):
    """The training loss, or the weights about to be saved, stopped being finite (NaN or infinite)."""


class StopOnDivergence(Callback):
    """Raise :class:`TrainingDiverged` when the training loss is NaN or infinite, before any checkpoint holds the
    diverged weights.

    Every step's loss is checked on its device, without waiting for it: the first step whose loss is not finite
    (and that loss) is kept in a device tensor, read at the steps whose metrics are logged (every
    ``trainer.log_every_n_steps``, when the loggers read the loss anyway), at the last step, and whenever a
    checkpoint is about to be written (``on_save_checkpoint``), where the weights and optimizer state it holds are
    checked too. So no checkpoint with a non-finite number is written: ``last.ckpt`` stays the last good one.
    Under DDP every process takes the same decision.

    The message names the step (``trainer.global_step`` at the end of the batch whose loss it was: the optimizer
    step that used it), the checkpoint left intact to resume from, and what to change. It must see a step's loss
    before a checkpoint of that step is taken: :func:`tfgraph.trainer.build_trainer` puts it first among the
    callbacks.
    """

    def __init__(self) -> None:
        self._bad_step: torch.Tensor | None = None  # the first step with a non-finite loss; -1: none yet
        self._bad_loss: torch.Tensor | None = None  # that loss

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._bad_step = self._bad_loss = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            self._record(loss.detach(), trainer.global_step)
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0 or is_last_step(trainer):
            self._check(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._check(trainer, checkpoint)

    def _record(self, loss: torch.Tensor, step: int) -> None:
        """Keep the step and the loss if it is the first that is not finite (on the loss's device: no sync)."""
        if self._bad_step is None or self._bad_loss is None:
            self._bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._bad_loss = torch.zeros((), dtype=torch.float32, device=loss.device)
        first = ~torch.isfinite(loss).all() & (self._bad_step < 0)
        self._bad_step = torch.where(first, step, self._bad_step)
        self._bad_loss = torch.where(first, loss.float().mean(), self._bad_loss)

    def _check(self, trainer: pl.Trainer, checkpoint: Mapping[str, Any] | None = None) -> None:
        finite = self._bad_step is None or bool(self._bad_step < 0)
        if finite and checkpoint is not None:
            finite = all_finite(checkpoint_tensors(checkpoint))
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        raise TrainingDiverged(
            f"training diverged: {self._what(trainer)}; {resume_point(trainer)}; "
            "lower optimizer.lr (or clip gradients: trainer.gradient_clip_val)"
        )

    def _what(self, trainer: pl.Trainer) -> str:
        """What is not finite, the same on every process: the first step whose loss was not finite on any of
        them (a collective: every process calls it once they have decided to stop)."""
        device = trainer.strategy.root_device
        bad_step = torch.full((), -1, dtype=torch.long, device=device) if self._bad_step is None else self._bad_step
        bad_loss = torch.zeros((), device=device) if self._bad_loss is None else self._bad_loss
        steps = trainer.strategy.all_gather(bad_step).reshape(-1).cpu()
        losses = trainer.strategy.all_gather(bad_loss).reshape(-1).cpu()
        if not bool((steps >= 0).any()):
            return f"the weights are not finite at step {trainer.global_step} (the loss was finite)"
        first = int(steps.masked_fill(steps < 0, torch.iinfo(steps.dtype).max).argmin())
        return f"the loss is {float(losses[first])} at step {int(steps[first])}"


def resume_point(trainer: pl.Trainer) -> str:
    """Which checkpoint is left to resume from: this run's last ``last.ckpt``, else the best ModelCheckpoint
    saved, else the checkpoint the run resumed from."""
    for callback in trainer.callbacks:
        if isinstance(callback, LastCheckpoint) and callback.saved_step is not None:
            return f"the last checkpoint, {callback.path} (step {callback.saved_step}), is left intact"
    best = next((c.best_model_path for c in trainer.checkpoint_callbacks if getattr(c, "best_model_path", "")), "")
    root = getattr(trainer, "default_root_dir", None)  # the run's dir: not a path a resumed checkpoint made up
    if best and (root is None or Path(best).resolve().is_relative_to(Path(root).resolve())):
        return f"the best checkpoint, {best}, is left intact"
    if trainer.ckpt_path:
        return f"no checkpoint was written since the run resumed from {trainer.ckpt_path}, which is left intact"
    return "no checkpoint was written yet"


def checkpoint_tensors(checkpoint: Mapping[str, Any]) -> Iterator[torch.Tensor]:
    """The weights and the optimizer state of a checkpoint (not the callbacks' states: a best score starts at
    infinity)."""

    def walk(node: Any) -> Iterator[torch.Tensor]:
        if isinstance(node, torch.Tensor):
            yield node
        elif isinstance(node, Mapping):
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                yield from walk(value)

    yield from walk(checkpoint.get("state_dict", {}))
    yield from walk(checkpoint.get("optimizer_states", []))


def all_finite(tensors: Iterator[torch.Tensor]) -> bool:
    """Whether every floating-point tensor is finite (one host sync per device)."""
    flags: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in tensors:
        if tensor.is_floating_point() or tensor.is_complex():
            flags.setdefault(tensor.device, []).append(torch.isfinite(tensor).all())
    return all(bool(torch.stack(device_flags).all()) for device_flags in flags.values())


# ------------------------------------------------------------------------------------------------- logs


class ContinueLogs(Callback):
    """When training starts, tell each logger that can continue a run's earlier logs in its folder (one with a
    ``resume_at(step)`` method: :class:`tfgraph.tasks.loggers.CSVLogger` and ``TensorBoardLogger``) the step this
    run's logs start at, and write in the run's log what it did with the earlier ones.

    A run resumed into its own dir then keeps the rows and events of the steps before its checkpoint's and
    replaces those after it (which it trains again); a new run (step 0) replaces an earlier run's.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:  # (the step a resumed run logs first is its checkpoint's global_step)
            resume_at = getattr(logger, "resume_at", None)
            done = resume_at(trainer.global_step) if callable(resume_at) else None
            if done:
                log.info("%s", done)


__all__ = [
    "AtomicCheckpointIO",
    "ContinueLogs",
    "LastCheckpoint",
    "ProgressLog",
    "StopOnDivergence",
    "TrainingDiverged",
    "ValidateAtLastStep",
    "is_last_step",
    "write_atomically",
]
