"""Resuming from a checkpoint taken in the middle of an epoch, on tfgraph's own DataModules.

A run interrupted after a mid-epoch checkpoint and resumed from it must train on the batches the interrupted run
had not reached, so that its losses, weights and optimizer state equal an uninterrupted run's.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

import tfgraph
from tests.test_train import QUIET, StopAt
from tfgraph.data.examples import ResumableLoader
from tfgraph.tasks import load_checkpoint
from tfgraph.train import train

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}\n" for i in range(60))


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")}


def _config(run_dir: Path, data: list[str], *overrides: str):
    return tfgraph.compose(
        [
            *data,
            "trainer.max_steps=9",
            "trainer.val_check_interval=100",
            "trainer.limit_val_batches=1",
            "callbacks=checkpoints",
            "callbacks.last_checkpoint.every_n_train_steps=3",
            "test=false",
            f"paths.output_dir={run_dir}",
            *QUIET,
            *overrides,
        ]
    )


@pytest.fixture
def book(tmp_path: Path) -> Path:
    path = tmp_path / "book.txt"
    path.write_text(TEXT)
    return path


@pytest.mark.parametrize("data", ["text", "reverse"])
def test_a_run_resumed_mid_epoch_equals_an_uninterrupted_one(tmp_path: Path, book: Path, data: str) -> None:
    # 4 training batches an epoch: the checkpoint at step 3 is taken inside the first epoch, then the
    # resumed run finishes epoch 0 (one batch), runs epoch 1 and the first batch of epoch 2. The text run
    # has dropout: the checkpoint holds the random state it draws from.
    overrides = {
        "text": [
            "model=gpt2_tiny",
            "model.dropout=0.1",  # the dropout masks too must continue where they were
            "task=causal_lm",
            "data=text",
            f"data.path={book}",
            "data.block_size=32",
            "model.max_len=32",
            "data.batch_size=20",
        ],
        "reverse": [
            "model=transformer_tiny",
            "task=seq2seq",
            "data=reverse",
            "data.source_options.n_train=64",
            "data.batch_size=16",
            "task.generate=false",
            "optimized_metric=val/loss",
            "optimized_mode=min",
        ],
    }[data]
    straight = train(_config(tmp_path / "straight", overrides))
    first = _config(tmp_path / "first", overrides)
    with open_dict(first):
        first.callbacks.stop = {"_target_": f"{StopAt.__module__}.StopAt", "step": 4}
    train(first)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    checkpoint = load_checkpoint(last)
    assert checkpoint["global_step"] == 3
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"batches_yielded": 3}]
    resumed = train(_config(tmp_path / "resumed", overrides, f"ckpt_path={last}"))

    steps = _losses(tmp_path / "straight")
    assert sorted(steps) == list(range(9))
    first_losses = {s: v for s, v in _losses(tmp_path / "first").items() if s < 3}
    assert {**first_losses, **_losses(tmp_path / "resumed")} == pytest.approx(steps, abs=1e-6)
    end_straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    end_resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert end_straight["global_step"] == end_resumed["global_step"] == 9
    for name, value in end_straight["state_dict"].items():
        torch.testing.assert_close(value, end_resumed["state_dict"][name], msg=name)
    assert resumed["val/loss"] == pytest.approx(straight["val/loss"], abs=1e-6)


def test_the_loader_skips_the_batches_of_its_saved_position() -> None:
    data = list(range(10))
    loader = ResumableLoader(data, batch_size=3)
    it = iter(loader)
    next(it), next(it)
    assert loader.state_dict() == {"batches_yielded": 2}
    restored = ResumableLoader(data, batch_size=3)
    restored.load_state_dict(loader.state_dict())
    assert [b.tolist() for b in restored] == [[6, 7, 8], [9]]
    assert [b.tolist() for b in restored] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]  # the next epoch is whole
    assert restored.state_dict() == {"batches_yielded": 0}  # a finished epoch: the next resume starts a new one
