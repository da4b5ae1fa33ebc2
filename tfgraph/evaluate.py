"""``evaluate(cfg) -> metrics``: the pure function behind ``tfgraph-eval``.

The checkpoint alone rebuilds the task (model config, tokenizer, label names and options are stored in it
as plain containers, read with ``torch.load(weights_only=True)``) and the data it was trained on (its data
config, with the checkpoint's tokenizer); ``cfg.data`` overrides keys of that data config. The checkpoint is data,
never code (:mod:`tfgraph.tasks.checkpoint`): what it may import needs ``trust_plugins=true`` or ``plugins=[...]``.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from omegaconf import DictConfig

from tfgraph.config import plain, prepare_output_dir
from tfgraph.registry import ConfigError, load_plugins
from tfgraph.run_data import checkpoint_datamodule, has_split, set_up
from tfgraph.sweeps import write_json
from tfgraph.tasks import load_checkpoint, load_task, trust_options
from tfgraph.trainer import build_trainer, format_metrics, scalars

log = logging.getLogger(__name__)
SPLITS = ("test", "val")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split`` (``test`` or ``val``) of its data.

    Returns:
        ``{"test/loss": ..., ...}`` (``val/...`` for ``split=val``), as floats.

    Raises:
        tfgraph.ConfigError: no ``ckpt_path``, a checkpoint that is not a readable tfgraph checkpoint or that would
            run code (see :func:`tfgraph.tasks.load_checkpoint`), an unknown split, a split the data does not have.
        tfgraph.data.DataError: the data cannot be read.
    """
    if not cfg.get("ckpt_path"):
        raise ConfigError.at("ckpt_path", "which checkpoint? tfgraph-eval ckpt_path=<run dir>/checkpoints/last.ckpt")
    output_dir = prepare_output_dir(cfg)
    load_plugins(cfg.get("plugins"), "plugins")
    if cfg.split not in SPLITS:
        raise ConfigError.at("split", f"expected one of {', '.join(SPLITS)}, got {cfg.split!r}")

    trust = trust_options(cfg)
    checkpoint = load_checkpoint(cfg.ckpt_path, **trust)  # read and checked before anything is built
    pl.seed_everything(cfg.seed, workers=True)
    task = load_task(checkpoint, **trust, where=str(cfg.ckpt_path))
    datamodule = checkpoint_datamodule(
        checkpoint,
        where=str(cfg.ckpt_path),
        overrides=plain(cfg.get("data")),
        trust_plugins=trust["trust_plugins"],
    )
    set_up(datamodule, task.name, "validate" if cfg.split == "val" else "test")
    if not has_split(datamodule, cfg.split):
        raise ConfigError.at("split", f"data {datamodule.name!r} has no {cfg.split} examples")

    trainer = build_trainer(cfg)
    run = trainer.validate if cfg.split == "val" else trainer.test
    run(task, datamodule=datamodule, verbose=False)
    metrics = scalars(trainer.callback_metrics, prefix=f"{cfg.split}/")
    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)  # whole or not at all: a temporary file, then os.replace
    log.info("%s metrics of %s: %s", cfg.split, cfg.ckpt_path, format_metrics(metrics))
    return metrics
