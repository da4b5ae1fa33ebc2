"""logger=wandb: a wandb run per tfgraph run in the run dir, offline (WANDB_MODE=offline) with the run's metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

import tfgraph
from tests.conftest import tiny_text_run

wandb = pytest.importorskip("wandb", reason="logger=wandb needs wandb (the wandb extra: pip install -e '.[wandb]')")


@pytest.mark.slow
def test_each_run_logs_to_an_offline_wandb_run_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    overrides = [o for o in tiny_text_run(tmp_path) if o != "~logger"]
    files = []
    try:
        for run in ("a", "b"):  # two runs in one process: Lightning's logger would log b into a's wandb run
            run_dir = tmp_path / run
            tfgraph.train(
                tfgraph.compose(
                    [*overrides, "logger=wandb", f"paths.output_dir={run_dir}", "trainer.max_steps=2", "test=true"]
                )
            )
            (found,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
            files.append(found)
    finally:
        wandb.finish()
    assert files[0].name != files[1].name  # two wandb runs
    for found in files:
        data = found.read_bytes()  # the run's records (protobuf): the metric names and the config's values
        for logged in (
            b"train/loss",
            b"val/loss",
            b"test/loss",
            b"trainer/global_step",
            b"optimized_metric",
            b"decoder_only",
        ):
            assert logged in data, logged


def test_the_option_composes_to_tfgraph_s_logger(tmp_path: Path) -> None:
    cfg = tfgraph.compose(["logger=wandb", f"paths.output_dir={tmp_path}"])
    assert cfg.logger.wandb._target_ == "tfgraph.tasks.loggers.WandbLogger"
    assert cfg.logger.wandb.save_dir == str(tmp_path)
