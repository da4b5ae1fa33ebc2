"""The progress log's interval is a config value (callbacks.progress_log.every_seconds), and each validation logs
its metrics where no bar shows."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pytorch_lightning.callbacks import ProgressBar

import tfgraph
from tests.conftest import tiny_text_run
from tfgraph.tasks.callbacks import ProgressLog, StepProgressBar, validation_line
from tfgraph.trainer import build_trainer


def test_validation_line_lists_the_metrics_and_the_time() -> None:
    line = validation_line(1250, {"val/perplexity": 3.4321, "val/loss": 1.23456}, 4.06)
    assert line == "validation at step 1250: val/loss 1.235, val/perplexity 3.432 (4.1 s)"


def test_each_step_and_each_validation_log_a_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    overrides = [
        *tiny_text_run(tmp_path),
        f"paths.output_dir={tmp_path / 'run'}",
        "trainer.max_steps=2",
        "trainer.val_check_interval=1",
        "callbacks.progress_log.every_seconds=0",
    ]
    with caplog.at_level(logging.INFO, logger="tfgraph"):
        tfgraph.train(tfgraph.compose(overrides))
    lines = [r.getMessage() for r in caplog.records if r.name == "tfgraph.tasks.callbacks"]
    steps = [line.split(",")[0] for line in lines if line.startswith("step ")]
    assert steps == ["step 1/2 (50%)", "step 2/2 (100%)"]  # every step: every_seconds=0
    validations = [line for line in lines if line.startswith("validation at step")]
    assert [v.split(":")[0] for v in validations] == ["validation at step 1", "validation at step 2"]
    assert all("val/loss " in v and "val/perplexity " in v and v.endswith(" s)") for v in validations)


def test_the_trainer_has_one_progress_log_from_the_config(tmp_path: Path) -> None:
    def progress(*overrides: str) -> list[float]:
        cfg = tfgraph.compose(["trainer.accelerator=cpu", f"paths.output_dir={tmp_path}", *overrides])
        return [c.every_seconds for c in build_trainer(cfg).callbacks if isinstance(c, ProgressLog)]

    assert progress() == [30]
    assert progress("callbacks.progress_log.every_seconds=5") == [5]
    assert progress("callbacks=none") == [30]  # every run has one
    with pytest.raises(tfgraph.ConfigError, match=r"callbacks.progress_log: every_seconds must be .* >= 0, got -1"):
        progress("callbacks.progress_log.every_seconds=-1")


def test_a_run_without_a_bar_of_its_own_gets_the_step_bar(tmp_path: Path) -> None:
    def bars(*overrides: str) -> list[type]:
        cfg = tfgraph.compose(["trainer.accelerator=cpu", f"paths.output_dir={tmp_path}", *overrides])
        return [type(c) for c in build_trainer(cfg).callbacks if isinstance(c, ProgressBar)]

    assert bars() == bars("callbacks=none") == [StepProgressBar]  # not Lightning's TQDM bar, "Epoch 3/-2"
    assert bars("callbacks=none", "trainer.enable_progress_bar=false") == []
