"""Progress in a log: ``step N/max_steps``, loss, rate and time left where no bar shows, and why a run stopped early."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import tfgraph
from tests.conftest import tiny_text_run
from tfgraph.tasks.callbacks import StepProgressBar, progress_line
from tfgraph.trainer import build_trainer


def test_progress_line_says_step_loss_rate_and_time_left() -> None:
    assert progress_line(1250, 2000, 0, 250.0, 1.23456) == "step 1250/2000 (62%), loss 1.235, 5 steps/s, 2m30s left"
    assert progress_line(10, 10, 0, 2.0) == "step 10/10 (100%), 5 steps/s"
    assert progress_line(3, -1, 0, 0.0) == "step 3"
    assert progress_line(5, 7205, 0, 1.0).endswith("5 steps/s, 24m00s left")


def _run(tmp_path: Path, *overrides: str) -> dict[str, float]:
    return tfgraph.train(
        tfgraph.compose([*tiny_text_run(tmp_path), f"paths.output_dir={tmp_path / 'run'}", *overrides])
    )


def test_a_run_without_a_bar_logs_its_steps(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tfgraph"):
        _run(tmp_path, "trainer.max_steps=3")
    lines = [r.getMessage() for r in caplog.records if r.name == "tfgraph.tasks.callbacks"]
    assert any(line.startswith("step 3/3 (100%), loss ") for line in lines), lines
    assert not any("stopped at step" in line for line in lines)


def test_early_stopping_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tfgraph"):
        _run(
            tmp_path,
            "trainer.max_steps=20",
            "trainer.val_check_interval=1",
            "optimizer.lr=0",
            "callbacks.early_stopping.patience=1",
        )
    (line,) = [r.getMessage() for r in caplog.records if "stopped at step" in r.getMessage()]
    assert line.startswith("stopped at step 2 of 20: early stopping: val/loss did not improve for 1 validations")


def test_the_rich_bar_counts_the_run_s_steps(tmp_path: Path) -> None:
    cfg = tfgraph.compose(["trainer.max_steps=2000", "trainer.accelerator=cpu", f"paths.output_dir={tmp_path}"])
    trainer = build_trainer(cfg)
    (bar,) = [c for c in trainer.callbacks if isinstance(c, StepProgressBar)]
    bar.setup(trainer, None, "fit")  # as fit does: the bar learns its trainer
    assert bar.total_train_batches == 2000
    assert bar._get_train_description(3) == "Epoch 3, step"  # not Lightning's "Epoch 3/-2" of max_epochs: -1
