"""Lightning's CSV and TensorBoard loggers, continuing the logs of a run resumed into its own dir, and its
Weights & Biases logger, one wandb run per tfgraph run.

Lightning's ``CSVLogger`` deletes the ``metrics.csv`` it finds in its folder, so a run resumed into its own dir
loses the metrics of the steps before its checkpoint; its ``TensorBoardLogger`` adds an event file whose steps
overlap the earlier ones. These keep what was logged before the step training starts at
(:class:`tfgraph.tasks.callbacks.ContinueLogs` calls their ``resume_at(step)``, which says what it did):

- :class:`CSVLogger` keeps ``metrics.csv`` as the run's one file: the rows of the steps before the resumed step
  stay, those of that step and later (which the resumed run trains and logs again) are dropped, and the resumed
  run's rows follow. A new run (step 0) starts the file afresh.
- :class:`TensorBoardLogger` keeps the earlier event files and starts its own with ``purge_step`` at the resumed
  step: TensorBoard shows the earlier events before that step, then the resumed run's.

:class:`WandbLogger` starts a wandb run of its own for each tfgraph run, also where several train in one process.

:func:`sync_csv_columns` mends what a fit in spawned processes leaves a CSV logger of this process not knowing.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Any, ClassVar

import pytorch_lightning as pl
from pytorch_lightning import loggers
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from tfgraph.tasks.callbacks import write_atomically


class MetricsWriter(ExperimentWriter):
    """Lightning's writer of ``metrics.csv`` that keeps the file it finds (until :meth:`resume_at` says which rows
    to keep) and rewrites it whole or not at all when its columns change."""

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        pass

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        path = Path(self.metrics_file_path)
        with path.open(newline="") as file:
            rows = list(csv.DictReader(file))
        write_atomically(path, lambda file: write_rows(file, fieldnames, rows), mode="w")

    def resume_at(self, step: int) -> str | None:
        """Keep the rows of the steps before ``step`` (all of them complete), drop the rest; what was done."""
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return f"resuming at step {step}: {path} starts there (none was here)" if step else None
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            fieldnames, rows = list(reader.fieldnames or []), list(reader)
        kept = [row for row in rows if complete(row) and int(float(row.get("step") or -1)) < step]
        if kept:
            write_atomically(path, lambda file: write_rows(file, fieldnames, kept), mode="w")
            self.metrics_keys = fieldnames
        else:
            path.unlink()
            self.metrics_keys = []
        if not step:
            return f"{path}: an earlier run's {len(rows)} rows replaced (this run starts at step 0)" if rows else None
        return (
            f"resuming: appending to {path} after its {len(kept)} rows of the steps before {step} "
            f"({len(rows) - len(kept)} rows of step {step} and later dropped: this run logs those steps again)"
        )


def complete(row: dict[str | None, Any]) -> bool:
    """Whether a row read by ``csv.DictReader`` has exactly the header's fields (not one cut short by a crash)."""
    return None not in row and None not in row.values()


def write_rows(file: IO[str], fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
    writer = csv.DictWriter(file, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)


class CSVLogger(loggers.CSVLogger):
    """Lightning's ``CSVLogger`` (same arguments) whose ``metrics.csv`` a resumed run continues: see the module."""

    @property
    @rank_zero_experiment
    def experiment(self) -> MetricsWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = MetricsWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def resume_at(self, step: int) -> str | None:
        """Keep the rows of the steps before ``step``, the first this run logs; what was done (None: nothing)."""
        return self.experiment.resume_at(step)


class TensorBoardLogger(loggers.TensorBoardLogger):
    """Lightning's ``TensorBoardLogger`` (same arguments) whose event files a resumed run continues: see the
    module."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._earlier = len(event_files(self.log_dir))  # before this run writes its own

    @rank_zero_only
    def resume_at(self, step: int) -> str | None:
        """Start this run's events with ``purge_step=step``, so that TensorBoard hides the earlier events of that
        step and later; what was done (None: nothing, there are no earlier events)."""
        if not self._earlier:
            return None
        self._kwargs["purge_step"] = step
        if self._experiment is not None:  # opened before training (log_hyperparams): reopened with purge_step
            self._experiment.close()
            self._experiment = None
        what = "resuming: appending" if step else "a new run: adding"
        return (
            f"{what} to {self.log_dir}: its {self._earlier} earlier event files kept, this run's starts with "
            f"purge_step={step} (TensorBoard shows their events before step {step}, then this run's)"
        )


class WandbLogger(loggers.WandbLogger):
    """Lightning's ``WandbLogger`` (same arguments) that logs each tfgraph run to a wandb run of its own.

    Lightning's logs into any wandb run in progress in the process, so the jobs of a sweep run in one process
    (Hydra's default launcher) and a script calling ``tfgraph.train`` twice would all log into the first job's
    run. This one first finishes a run that an earlier ``WandbLogger`` of tfgraph started; a run the user's own
    code started (``wandb.init`` before training) is still logged into, as with Lightning's.
    """

    started: ClassVar[set[str]] = set()  # the ids of the wandb runs these loggers started, in this process

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        import wandb

        if self._experiment is None and wandb.run is not None and wandb.run.id in WandbLogger.started:
            wandb.finish()  # an earlier tfgraph run's: done
        fresh = self._experiment is None and wandb.run is None
        experiment = loggers.WandbLogger.experiment.fget(self)
        if fresh and getattr(experiment, "id", None):
            WandbLogger.started.add(experiment.id)
        return experiment


def event_files(log_dir: str) -> list[Path]:
    """The TensorBoard event files in ``log_dir``."""
    return sorted(Path(log_dir).glob("events.out.tfevents.*"))


def sync_csv_columns(trainer: pl.Trainer) -> None:
    """Tell each CSVLogger the columns its metrics.csv already has.

    A fit in spawned processes (trainer=ddp_sim) writes the file there, and the logger of this process never
    learns its columns; the next stage's rewrite of the file with new columns then fails (Lightning 2.6).
    """
    for logger in trainer.loggers:
        if not isinstance(logger, loggers.CSVLogger) or not trainer.is_global_zero:
            continue
        writer = logger.experiment
        path = Path(writer.metrics_file_path)
        if path.is_file():
            with path.open(newline="") as f:
                columns = next(csv.reader(f), [])
            writer.metrics_keys = sorted(set(writer.metrics_keys) | set(columns))


__all__ = ["CSVLogger", "TensorBoardLogger", "WandbLogger", "sync_csv_columns"]
