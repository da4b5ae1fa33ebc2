"""Resuming from a checkpoint taken in the middle of an epoch, on tfgraph's own DataModules, after a clean stop or
a kill -9.

A run interrupted after a mid-epoch checkpoint and resumed from it must train on the batches the interrupted run
had not reached, so that its losses, weights and optimizer state equal an uninterrupted run's. Resumed into its own
dir, it continues the earlier logs: ``csv/metrics.csv`` then holds every step once, as an uninterrupted run's does,
and TensorBoard shows each step once. A kill at any moment (in a step, while a checkpoint is written, while the
metrics are) leaves every checkpoint file whole.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

import tfgraph
from tests.test_train import QUIET, StopAt
from tfgraph.data.examples import ResumableLoader
from tfgraph.tasks import load_checkpoint
from tfgraph.tasks.callbacks import AtomicCheckpointIO
from tfgraph.train import train

REPO = Path(__file__).resolve().parents[1]
TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}\n" for i in range(60))


def _losses(run_dir: Path) -> dict[int, float]:
    rows = _rows(run_dir)
    steps = [int(row["step"]) for row in rows if row.get("train/loss")]
    assert len(steps) == len(set(steps)), f"steps logged more than once: {sorted(steps)}"
    return {int(row["step"]): float(row["train/loss"]) for row in rows if row.get("train/loss")}


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _config(run_dir: Path, data: list[str], *overrides: str) -> DictConfig:
    return tfgraph.compose([*_run(data, *overrides), f"paths.output_dir={run_dir}"])


def _run(data: list[str], *overrides: str) -> list[str]:
    return [
        *data,
        "trainer.max_steps=9",
        "trainer.val_check_interval=100",
        "trainer.limit_val_batches=1",
        "callbacks=checkpoints",
        "callbacks.last_checkpoint.every_n_train_steps=3",
        "test=false",
        *QUIET,
        *overrides,
    ]


def text_data(book: Path) -> list[str]:
    """A tiny GPT on a 60-line text: 4 training batches an epoch, and dropout (the checkpoint holds the random
    state it draws from)."""
    return [
        "model=gpt2_tiny",
        "model.dropout=0.1",  # the dropout masks too must continue where they were
        "task=causal_lm",
        "data=text",
        f"data.path={book}",
        "data.block_size=32",
        "model.max_len=32",
        "data.batch_size=20",
    ]


def text_run(tmp_path: Path, *overrides: str, output_dir: Path | None = None) -> Any:
    """The overrides of a 9-step run of :func:`text_data` (last.ckpt every 3 steps, the loss logged every step, no
    validation but after the last step), its text written to ``tmp_path``; with ``output_dir``, the composed
    config of that run."""
    book = tmp_path / "book.txt"
    if not book.exists():
        book.write_text(TEXT)
    run = _run(text_data(book), *overrides)
    return run if output_dir is None else tfgraph.compose([*run, f"paths.output_dir={output_dir}"])


def command(*overrides: str, run_dir: Path) -> subprocess.CompletedProcess:
    """``tfgraph-train`` with ``hydra.run.dir=run_dir`` in a process of its own (this repository importable: the
    tests' callbacks are named in its config)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "tfgraph.cli.train", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def target(cls: type) -> str:
    """The ``_target_`` of a class of the tests for :func:`command`'s process (where ``tests`` is a package)."""
    return f"tests.{cls.__module__.rpartition('.')[2]}.{cls.__qualname__}"


def checkpoint_files(run_dir: Path) -> list[Path]:
    """Every file in the run dir that anything would take for a checkpoint."""
    return sorted(run_dir.rglob("*.ckpt"))


def assert_loadable(run_dir: Path) -> dict[str, int]:
    """Every checkpoint file in the run dir loads with weights_only=True; their steps."""
    return {path.name: torch.load(path, weights_only=True)["global_step"] for path in checkpoint_files(run_dir)}


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
        "text": text_data(book),
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


def test_a_resume_refuses_settings_other_than_the_checkpoints_and_takes_the_same_ones(book: Path) -> None:
    from tfgraph.config import plain
    from tfgraph.registry import ConfigError
    from tfgraph.run_data import absolute_paths
    from tfgraph.train import check_resumed_settings

    trained_with = [*text_data(book), "optimizer.lr=1e-3", "scheduler=linear"]
    cfg = tfgraph.compose(trained_with)
    task = plain(cfg.task)
    checkpoint = {  # what a run of these overrides stores
        "tfgraph": {"task": task.pop("name")},
        "hyper_parameters": {
            "model": {**plain(cfg.model), "vocab_size": 40},
            "tokenizer": "{}",
            "optimizer": plain(cfg.optimizer),
            "scheduler": plain(cfg.scheduler),
            "data": absolute_paths(plain(cfg.data)),
            **task,
        },
    }
    check_resumed_settings(tfgraph.compose(["ckpt_path=last.ckpt"]), checkpoint, where="last.ckpt")  # none given
    same = [*trained_with, "ckpt_path=last.ckpt", "trainer.max_steps=99"]  # and the trainer, the command line's
    check_resumed_settings(tfgraph.compose(same), checkpoint, where="last.ckpt")
    for override, key, says in [
        ("optimizer.lr=3e-4", "optimizer.lr", "given 0.0003, but the checkpoint has 0.001"),
        ("optimizer=sgd", "optimizer.name", "given 'sgd', but the checkpoint has 'adamw'"),
        ("optimizer.betas=[0.8,0.9]", "optimizer.betas", "given [0.8, 0.9], but the checkpoint has [0.9, 0.99]"),
        ("data.block_size=8", "data.block_size", "given 8, but the checkpoint has 32"),
        ("model.d_model=32", "model.d_model", "given 32, but the checkpoint has 64"),
        ("task.aux_loss_weight=0.1", "task.aux_loss_weight", "given 0.1, but the checkpoint has 0.01"),
    ]:
        with pytest.raises(ConfigError) as info:
            check_resumed_settings(tfgraph.compose([*same, override]), checkpoint, where="last.ckpt")
        problems = dict(info.value.problems)
        assert problems[key] == says, override
        assert "init_from=last.ckpt in place of ckpt_path" in problems["ckpt_path"]
    # back to a default value: only the command line's overrides tell that it was given
    back = [*same, "scheduler=cosine", "optimizer.lr=3e-3", "model=gpt2_tiny"]  # the model's vocab_size is the data's
    check_resumed_settings(tfgraph.compose(back), checkpoint, where="last.ckpt")  # cannot tell from the config alone
    with pytest.raises(ConfigError) as info:
        check_resumed_settings(tfgraph.compose(back), checkpoint, where="last.ckpt", overrides=back)
    problems = dict(info.value.problems)
    assert problems["scheduler.name"] == "given 'cosine', but the checkpoint has 'linear'"
    assert problems["optimizer.lr"] == "given 0.003, but the checkpoint has 0.001"
    assert problems.keys() == {"scheduler.name", "scheduler.min_lr_ratio", "optimizer.lr", "ckpt_path"}


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


# ------------------------------------------------------------------------------------- the logs of a resumed run


def _scalars(log_dir: Path, tag: str) -> dict[int, float]:
    """What TensorBoard shows of ``tag`` in ``log_dir`` (each step once: it purges the events a resumed run
    logs again), checking that it shows each step once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    steps = [event.step for event in events.Scalars(tag)]
    assert len(steps) == len(set(steps)), f"TensorBoard shows steps more than once: {steps}"
    return {event.step: event.value for event in events.Scalars(tag)}


def test_a_run_resumed_into_its_dir_keeps_the_earlier_metrics_and_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # stopped at step 4 (last.ckpt at 3, and a validation at the stop), then resumed from last.ckpt into the
    # same dir: metrics.csv keeps the rows of steps 0-2, drops those of step 3 (the resumed run logs it again) and
    # goes on, as an uninterrupted run's; TensorBoard keeps the earlier event files and shows each step once
    loggers = "logger=many_loggers"
    straight = tmp_path / "straight"
    train(text_run(tmp_path, loggers, output_dir=straight))
    run = tmp_path / "run"
    first = text_run(tmp_path, loggers, output_dir=run)
    with open_dict(first):
        first.callbacks.stop = {"_target_": f"{StopAt.__module__}.StopAt", "step": 4}
    train(first)
    earlier_rows = [row for row in _rows(run) if int(row["step"]) < 3]
    assert {int(row["step"]) for row in _rows(run)} == {0, 1, 2, 3}
    earlier_events = {path: path.read_bytes() for path in (run / "tensorboard").glob("events.out.tfevents.*")}
    assert earlier_events

    with caplog.at_level(logging.INFO, logger="tfgraph"):
        train(text_run(tmp_path, loggers, f"ckpt_path={run}/checkpoints/last.ckpt", output_dir=run))
    assert f"resuming: appending to {run}/csv/metrics.csv after its {len(earlier_rows)} rows of the steps before 3" in (
        caplog.text
    )
    assert f"resuming: appending to {run}/tensorboard" in caplog.text

    assert _rows(run)[: len(earlier_rows)] == earlier_rows  # kept as they were
    assert _losses(run) == pytest.approx(_losses(straight), abs=1e-6)
    assert sorted(_losses(run)) == list(range(9))
    val = [row["val/loss"] for row in _rows(run) if row.get("val/loss")]
    assert val == pytest.approx([row["val/loss"] for row in _rows(straight) if row.get("val/loss")], abs=1e-6)
    for path, content in earlier_events.items():
        assert path.read_bytes() == content  # the earlier event files are kept, untouched
    assert _scalars(run / "tensorboard", "train/loss") == pytest.approx(
        _scalars(straight / "tensorboard", "train/loss")
    )


# ------------------------------------------------------------------------------------------- kill -9


class KillAt(pl.Callback):
    """A kill -9 of this process ``delay`` seconds after optimizer step ``step`` begins (or once it is reached in a
    resumed run), wherever it is then: in a step, writing a checkpoint, logging; at the latest when step
    ``step + 3`` begins. ``delay=None``: at the end of step ``step``, right after its checkpoint is taken (the
    callbacks run in order) and before its metrics are logged."""

    def __init__(self, step: int, delay: float | None) -> None:
        self.step, self.delay = step, delay
        self.armed = False

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step + 3:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.delay is not None and trainer.global_step >= self.step and not self.armed:
            self.armed = True
            threading.Timer(self.delay, os.kill, (os.getpid(), signal.SIGKILL)).start()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.delay is None and trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def random_kills(rng: random.Random, kills: int) -> list[tuple[int, float]]:
    """``kills`` kill steps (between 3 and 8, increasing) and delays (up to 0.2 s) at random."""
    return [(step, round(rng.uniform(0, 0.2), 3)) for step in sorted(rng.sample(range(3, 9), kills))]


def kill_run(tmp_path: Path, kills: list[tuple[int, float | None]]) -> None:
    """A 12-step run (last.ckpt every 2 steps) killed at each of ``kills`` (:class:`KillAt`'s step and delay),
    each time resumed from last.ckpt into the same dir, equals an uninterrupted run: weights, and every step's loss
    in metrics.csv; every checkpoint file left after each kill loads with weights_only=True."""
    overrides = text_run(tmp_path, "trainer.max_steps=12", "callbacks.last_checkpoint.every_n_train_steps=2")
    straight = tmp_path / "straight"
    train(tfgraph.compose([*overrides, f"paths.output_dir={straight}"]))
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    for i, (step, delay) in enumerate(kills):
        kill = f"+callbacks.kill={{_target_:{target(KillAt)},step:{step},delay:{'null' if delay is None else delay}}}"
        resume = [f"ckpt_path={last}"] if i else []
        done = command(*overrides, *resume, kill, run_dir=run)
        assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
        saved = assert_loadable(run)
        assert saved.get("last.ckpt", 0) >= 2, saved  # (every kill is at step 3 or later)
    done = command(*overrides, f"ckpt_path={last}", run_dir=run)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming: appending to" in (run / "train.log").read_text()

    assert assert_loadable(run)["last.ckpt"] == 12
    assert _losses(run) == pytest.approx(_losses(straight), abs=1e-6)
    assert sorted(_losses(run)) == list(range(12))
    end_straight = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    end_run = torch.load(last, weights_only=True)["state_dict"]
    for name, value in end_straight.items():
        torch.testing.assert_close(value, end_run[name], msg=name)


def test_a_run_killed_and_resumed_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    # killed at the worst moment: right after the checkpoint of step 4 is taken, before the loss of its step is
    # logged (that checkpoint must not be the one to resume from); kills at random moments are in the slow test
    kill_run(tmp_path, [(4, None)])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_run_killed_again_and_again_and_resumed_equals_an_uninterrupted_one(tmp_path: Path, seed: int) -> None:
    kill_run(tmp_path, random_kills(random.Random(seed), 3))  # in a step, writing a checkpoint or a metric, ...


def test_a_checkpoint_write_killed_midway_leaves_the_previous_file_whole(tmp_path: Path) -> None:
    # a process writes last.ckpt, then starts writing a new one and is killed once its bytes are out
    path = tmp_path / "checkpoints" / "last.ckpt"
    script = f"""
import time, torch
from tfgraph.tasks.callbacks import AtomicCheckpointIO
io = AtomicCheckpointIO()
io.save_checkpoint({{"state_dict": {{"w": torch.zeros(4)}}}}, {str(path)!r})
save = torch.save
def slow(obj, file):
    save(obj, file)
    file.flush()
    print("written", flush=True)
    time.sleep(600)
torch.save = slow
io.save_checkpoint({{"state_dict": {{"w": torch.ones(1 << 20)}}}}, {str(path)!r})
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "written\n"
    finally:
        process.kill()
        process.wait()
    torch.testing.assert_close(torch.load(path, weights_only=True)["state_dict"]["w"], torch.zeros(4))
    leftover = path.with_name(".last.ckpt.partial")
    assert leftover.stat().st_size > 4 << 20  # the new file was all there but the rename
    assert checkpoint_files(tmp_path) == [path]  # the leftover is not taken for a checkpoint

    AtomicCheckpointIO().save_checkpoint(
        {"state_dict": {"w": torch.ones(2)}}, path
    )  # the next save: whole, no leftover
    torch.testing.assert_close(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(2))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_the_trainer_writes_checkpoints_whole_and_keeps_the_plugins_a_config_names(tmp_path: Path) -> None:
    from lightning_fabric.plugins.environments import LightningEnvironment
    from pytorch_lightning.plugins.io import TorchCheckpointIO

    from tfgraph.train import build_trainer, with_atomic_checkpoints

    cfg = tfgraph.compose([*QUIET, f"paths.output_dir={tmp_path}"])
    assert type(build_trainer(cfg).strategy.checkpoint_io) is AtomicCheckpointIO
    environment = {"_target_": f"{LightningEnvironment.__module__}.LightningEnvironment"}
    kept = with_atomic_checkpoints(OmegaConf.create([environment]))
    assert [type(plugin) for plugin in kept] == [LightningEnvironment, AtomicCheckpointIO]
    own = with_atomic_checkpoints(OmegaConf.create([{"_target_": f"{TorchCheckpointIO.__module__}.TorchCheckpointIO"}]))
    assert [type(plugin) for plugin in own] == [TorchCheckpointIO]  # the config's own writer, not replaced


def test_the_csv_logger_keeps_the_complete_rows_before_the_resumed_step_and_a_new_run_starts_afresh(
    tmp_path: Path,
) -> None:
    from tfgraph.tasks.loggers import CSVLogger

    metrics = tmp_path / "csv" / "metrics.csv"
    metrics.parent.mkdir()
    earlier = "epoch,step,train/loss\n0,0,3.5\n0,1,3.25\n0,2,3.0\n0,3,2.75\n0,4"  # the last row cut short
    metrics.write_text(earlier)
    logger = CSVLogger(tmp_path, name="csv", version="")
    logger.log_hyperparams({"lr": 0.1})  # before training starts: the earlier file is still there
    assert metrics.read_text() == earlier
    said = logger.resume_at(2)
    assert said == (
        f"resuming: appending to {metrics} after its 2 rows of the steps before 2 (3 rows of step 2 and later "
        "dropped: this run logs those steps again)"
    )
    logger.log_metrics({"train/loss": 3.0, "val/loss": 3.1}, step=2)
    logger.save()
    assert metrics.read_text().splitlines() == [
        "epoch,step,train/loss,val/loss",
        "0,0,3.5,",
        "0,1,3.25,",
        ",2,3.0,3.1",
    ]

    new = CSVLogger(tmp_path, name="csv", version="")
    assert new.resume_at(0) == f"{metrics}: an earlier run's 3 rows replaced (this run starts at step 0)"
    assert not metrics.exists()
