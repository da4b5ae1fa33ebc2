"""A diverging run stops before any checkpoint holds its non-finite numbers, naming the last good checkpoint.

The loss is checked every step (a device flag, read on logging steps and before each checkpoint is written), so a
checkpoint taken between two logging steps (``every_n_train_steps`` < ``log_every_n_steps``) is refused too, and
the weights a checkpoint would hold are checked as it is taken: ``last.ckpt`` and ModelCheckpoint's ``step*.ckpt``
stay the last good ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from tests.test_resume import checkpoint_files, command, target, text_run
from tfgraph.train import StopOnDivergence, TrainingDiverged, train


class NaNLoss(pl.Callback):
    """From optimizer step ``step`` on, the loss the trainer sees is NaN while its gradients stay finite (so only
    the loss check can tell; the weights a checkpoint holds stay finite)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        training_step = pl_module.training_step

        def poisoned(*args: Any, **kwargs: Any) -> torch.Tensor:
            loss = training_step(*args, **kwargs)
            if trainer.global_step + 1 >= self.step:  # the batch whose optimizer step is `step`, and later ones
                loss = loss + (loss * math.nan).detach()
            return loss

        pl_module.training_step = poisoned


class NaNGradients(pl.Callback):
    """Make the gradients of optimizer step ``step`` NaN: the weights are NaN after it, its loss was finite."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step + 1 == self.step:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.fill_(math.nan)


def inject(name: str, cls: type, step: int) -> list[str]:
    return [f"+callbacks.{name}._target_={target(cls)}", f"+callbacks.{name}.step={step}"]


def assert_all_finite(run_dir: Path) -> dict[str, int]:
    """Every checkpoint in the run dir loads with weights_only=True and holds finite tensors only; their steps."""
    steps = {}
    for path in checkpoint_files(run_dir):
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
        tensors = [*checkpoint["state_dict"].values()]
        for optimizer in checkpoint["optimizer_states"]:
            tensors += [t for state in optimizer["state"].values() for t in state.values()]
        bad = [i for i, t in enumerate(tensors) if t.is_floating_point() and not torch.isfinite(t).all()]
        assert not bad, f"{path.name} holds {len(bad)} non-finite tensors"
        steps[path.name] = checkpoint["global_step"]
    return steps


def test_the_command_stops_a_diverging_run_with_exit_3_before_a_checkpoint_holds_it(tmp_path: Path) -> None:
    # the loss is NaN from step 5 on, its gradients finite; last.ckpt every 2 steps, the loss logged every 10:
    # the checkpoint of step 6 is refused (a check at logging steps only would save it and stop at step 10)
    run = tmp_path / "run"
    done = command(
        *text_run(tmp_path, "trainer.max_steps=12", "trainer.log_every_n_steps=10"),
        "callbacks.last_checkpoint.every_n_train_steps=2",
        *inject("nan", NaNLoss, 5),
        run_dir=run,
    )
    assert done.returncode == 3, done.stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    assert f"training diverged: the loss is nan at step 5; the last checkpoint, {last} (step 4), is left intact" in (
        done.stderr
    )
    assert "lower optimizer.lr (or clip gradients: trainer.gradient_clip_val)" in done.stderr
    assert "Traceback" not in done.stderr
    assert assert_all_finite(run) == {"last.ckpt": 4}


@pytest.mark.parametrize(
    ("overrides", "says", "left"),
    [
        # weights NaN after step 4, whose loss was finite: the check of the checkpoint taken at step 4 finds them
        (
            [*inject("nan", NaNGradients, 4), "callbacks.last_checkpoint.every_n_train_steps=2"],
            "the weights are not finite at step 4 (the loss was finite); the last checkpoint, {run}/checkpoints/"
            "last.ckpt (step 2), is left intact",
            {"last.ckpt": 2},
        ),
        # weights NaN after step 4, validated every 2 steps and each validation's checkpoint kept: ModelCheckpoint's
        # save at step 4 is refused, that of step 2 kept
        (
            [
                *inject("nan", NaNGradients, 4),
                "callbacks.last_checkpoint.every_n_train_steps=100",
                "trainer.val_check_interval=2",
                "callbacks.model_checkpoint.save_top_k=-1",
            ],
            "the weights are not finite at step 4 (the loss was finite); the best checkpoint, {best}, is left intact",
            {"step000002.ckpt": 2},
        ),
        # a NaN loss at step 3, between logging steps and with no checkpoint in between: found at step 10
        (
            [*inject("nan", NaNLoss, 3), "callbacks.last_checkpoint.every_n_train_steps=100"],
            "the loss is nan at step 3; no checkpoint was written yet",
            {},
        ),
    ],
    ids=["weights, last.ckpt", "weights, best checkpoint", "loss, no checkpoint"],
)
def test_a_diverging_run_never_writes_a_checkpoint_with_non_finite_numbers(
    tmp_path: Path, overrides: list[str], says: str, left: dict[str, int]
) -> None:
    run = tmp_path / "run"
    cfg = text_run(tmp_path, "trainer.max_steps=12", "trainer.log_every_n_steps=10", *overrides, output_dir=run)
    with pytest.raises(TrainingDiverged) as raised:
        train(cfg)
    assert assert_all_finite(run) == left
    best = next((run / "checkpoints" / name for name in left if name.startswith("step")), None)
    assert says.format(run=run, best=best) in str(raised.value)


def test_every_steps_loss_is_checked_without_reading_it_back_from_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # between logging steps the callback only queues device work: reading a tensor's value (the host sync on an
    # accelerator) fails there; the NaN of step 3 is still what the check at logging step 10 reports
    def read(*args: Any) -> Any:
        raise AssertionError("a tensor's value was read on the host")

    trainer = SimpleNamespace(
        max_steps=100,
        max_epochs=None,
        log_every_n_steps=10,
        global_step=0,
        callbacks=[],
        checkpoint_callbacks=[],
        ckpt_path=None,
        strategy=SimpleNamespace(
            root_device=torch.device("cpu"),
            reduce_boolean_decision=lambda decision, all: decision,
            all_gather=lambda tensor: tensor,
        ),
    )
    callback = StopOnDivergence()
    with monkeypatch.context() as patched:
        for name in ("__bool__", "__float__", "__int__", "__index__", "item", "tolist"):
            patched.setattr(torch.Tensor, name, read)
        for step in range(1, 10):
            trainer.global_step = step
            loss = torch.tensor(math.nan if step == 3 else 1.0)
            callback.on_train_batch_end(trainer, None, {"loss": loss}, None, step - 1)
    trainer.global_step = 10
    with pytest.raises(TrainingDiverged, match="training diverged: the loss is nan at step 3; no checkpoint was"):
        callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, None, 9)
