"""Distributed training on the CPU: DDP over 2 spawned processes (trainer=ddp_sim) takes the same steps as one
process with the same global batch; FSDP, which Lightning runs on GPUs only, is refused with a clear error.

The data order: under DDP, Lightning wraps the training sampler in a DistributedSampler that shuffles again
(seeded by the run's seed and the epoch) before giving each process every W-th index, so DDP trains on other
batches than one process does, each epoch still covering every window once. With ``trainer.overfit_batches``
Lightning reads the data in order instead: then process r of W gets windows r, r+W, ... and the processes'
batches of step k together are exactly one process's batch k of W times the size.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

import tfgraph
from tfgraph.tasks import load_checkpoint
from tfgraph.train import build_trainer, train

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "it"]


class RecordLosses(pl.Callback):
    """Write each step's training loss, averaged over the processes, to ``path`` (JSON, from rank 0), and rank
    0's own loss beside it (``<path>.rank0``).

    The loss logged to metrics.csv is rank 0's own batch's; its mean over the ranks is the global batch's loss
    when every process's batch holds as many tokens (full LM windows).
    """

    def __init__(self, *, path: str) -> None:
        self.path = path
        self.losses: list[float] = []
        self.own: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, *args: Any) -> None:
        self.own.append(float(outputs["loss"]))
        loss = trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")
        self.losses.append(float(loss))
        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps(self.losses))
            Path(self.path + ".rank0").write_text(json.dumps(self.own))


def text_file(path: Path) -> Path:
    """A deterministic text of short lines of words."""
    rng = random.Random(0)
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(300)) + "\n")
    return path


def config(out: Path, data: Path, *overrides: str) -> Any:
    cfg = tfgraph.compose(
        [
            "model=gpt2_tiny",  # dropout 0
            "data=text",
            f"data.path={data}",
            "data.block_size=16",
            "trainer.max_steps=4",
            "trainer.overfit_batches=2",  # in order: steps alternate between the first two global batches
            "trainer.val_check_interval=1000",
            "trainer.limit_val_batches=1",
            "trainer.num_sanity_val_steps=0",
            "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "callbacks=checkpoints",
            "test=false",
            "logger=csv",
            "sample.max_new_tokens=0",
            f"paths.output_dir={out}",
            *overrides,
        ]
    )
    with open_dict(cfg):
        cfg.callbacks.record = {"_target_": f"{__name__}.RecordLosses", "path": str(out / "losses.json")}
    return cfg


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_takes_the_steps_of_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    data = text_file(tmp_path / "text.txt")
    train(config(tmp_path / "one", data, "trainer=cpu", "data.batch_size=8"))
    metrics = train(config(tmp_path / "ddp", data, "trainer=ddp_sim", "data.batch_size=4", "test=true"))  # 2 x 4

    one = json.loads((tmp_path / "one" / "losses.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "losses.json").read_text())
    assert len(one) == len(ddp) == 4
    assert ddp == pytest.approx(one, abs=1e-5)
    assert one[-1] < one[0]  # it trained
    weights_one = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.ckpt")["state_dict"]
    weights_ddp = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.ckpt")["state_dict"]
    assert weights_one.keys() == weights_ddp.keys()
    for name, value in weights_one.items():
        torch.testing.assert_close(weights_ddp[name], value, atol=1e-5, rtol=1e-5, msg=name)

    # the test stage (spawned again) adds its columns to the metrics.csv the spawned fit wrote
    assert {"val/loss", "test/loss"} <= set(metrics)
    with open(tmp_path / "ddp" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"train/loss", "val/loss", "test/loss"} <= set(rows[0])
    # metrics.csv's train/loss under DDP: the first process's own share of the batch, not the mean
    rank0 = json.loads((tmp_path / "ddp" / "losses.json.rank0").read_text())
    logged = [float(row["train/loss"]) for row in rows if row["train/loss"]]
    assert logged == pytest.approx(rank0, abs=1e-6)
    assert max(abs(a - b) for a, b in zip(rank0, ddp, strict=True)) > 1e-4  # the shares' losses differ


def test_fsdp_on_the_cpu_is_a_config_error_naming_the_accelerator() -> None:
    cfg = tfgraph.compose(["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "paths.output_dir=/tmp/x"])
    with pytest.raises(tfgraph.ConfigError, match=r"trainer.accelerator: cpu: Lightning's FSDP strategy .* GPUs only"):
        build_trainer(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_trainer_without_a_gpu_is_a_config_error_naming_the_accelerator() -> None:
    cfg = tfgraph.compose(["trainer=ddp", "paths.output_dir=/tmp/x"])
    with pytest.raises(tfgraph.ConfigError, match=r"trainer.accelerator: gpu, but PyTorch finds no GPU here"):
        build_trainer(cfg)


def test_a_trainer_lightning_refuses_is_a_config_error_naming_trainer() -> None:
    cfg = tfgraph.compose(["+trainer.no_such_option=1", "paths.output_dir=/tmp/x", "~logger"])
    with pytest.raises(tfgraph.ConfigError, match=r"trainer.no_such_option: .*takes no argument .no_such_option."):
        build_trainer(cfg)


def test_an_error_raised_in_a_spawned_process_keeps_its_exit_code_and_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from torch.multiprocessing.spawn import ProcessRaisedException

    from tfgraph.cli.train import run_job, spawned_error

    def spawned(last_lines: str) -> ProcessRaisedException:
        trace = f'Traceback (most recent call last):\n  File "train.py", line 1, in fit\n{last_lines}\n'
        return ProcessRaisedException(f"\n\n-- Process 1 terminated with the following error:\n{trace}", 1, 42)

    diverged = spawned("tfgraph.train.TrainingDiverged: training diverged: the loss is nan at step 3")
    config_error = spawned("tfgraph.registry.ConfigError: model.n_heads: not divisible\n  model.d_ff: missing")
    assert spawned_error(str(diverged)) == (3, "training diverged: the loss is nan at step 3")
    assert spawned_error(str(config_error)) == (2, "model.n_heads: not divisible\n  model.d_ff: missing")
    assert spawned_error(str(spawned("ValueError: something else"))) is None

    cfg = tfgraph.compose(["paths.output_dir=/tmp/x"])
    for err, code in ((diverged, 3), (config_error, 2)):

        def fail(_: Any, err: Exception = err) -> dict[str, float]:
            raise err

        with pytest.raises(SystemExit) as exit_info:
            run_job(fail, cfg)
        assert exit_info.value.code == code
    assert capsys.readouterr().err.splitlines()[-2:] == ["error: model.n_heads: not divisible", "  model.d_ff: missing"]
    other = spawned("ValueError: something else")

    def fail_otherwise(_: Any) -> dict[str, float]:
        raise other

    with pytest.raises(ProcessRaisedException):  # not the config's fault: the traceback stays
        run_job(fail_otherwise, cfg)
