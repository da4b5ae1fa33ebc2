"""``evaluate(cfg) -> metrics``: the pure function behind ``tfgraph-eval``.

The checkpoint alone rebuilds the task (model config, tokenizer, label names and options are stored in it
as plain containers, read with ``torch.load(weights_only=True)``) and the data it was trained on (its data
config, with the checkpoint's tokenizer); ``cfg.data`` overrides keys of that data config.
"""

from __future__ import annotations

import json
import logging

import pytorch_lightning as pl
from omegaconf import DictConfig

from tfgraph.registry import ConfigError, load_plugins
from tfgraph.tasks import load_checkpoint, load_task
from tfgraph.train import (
    build_datamodule,
    build_trainer,
    check_fits,
    format_metrics,
    has_split,
    plain,
    prepare_output_dir,
    scalars,
)

log = logging.getLogger(__name__)
SPLITS = ("test", "val")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split`` (``test`` or ``val``) of its data.

    Returns:
        ``{"test/loss": ..., ...}`` (``val/...`` for ``split=val``), as floats.

    Raises:
        tfgraph.ConfigError: no ``ckpt_path`` or no such checkpoint, an unknown split, a split the data does not have.
        tfgraph.data.DataError: the data cannot be read.
    """
    if not cfg.get("ckpt_path"):
        raise ConfigError([("ckpt_path", "which checkpoint? tfgraph-eval ckpt_path=<run dir>/checkpoints/last.ckpt")])
    output_dir = prepare_output_dir(cfg)
    load_plugins(cfg.get("plugins"), "plugins")
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.split not in SPLITS:
        raise ConfigError([("split", f"expected one of {', '.join(SPLITS)}, got {cfg.split!r}")])

    checkpoint = load_checkpoint(cfg.ckpt_path)
    task = load_task(checkpoint)
    args = checkpoint["hyper_parameters"]
    data_cfg = {**(args.get("data") or {}), **(plain(cfg.get("data")) or {})}
    datamodule = build_datamodule(data_cfg, tokenizer=args["tokenizer"], label_names=args.get("label_names"))
    check_fits(task.name, datamodule)
    datamodule.prepare_data()
    datamodule.setup("validate" if cfg.split == "val" else "test")
    if not has_split(datamodule, cfg.split):
        raise ConfigError([("split", f"data {datamodule.name!r} has no {cfg.split} examples")])

    trainer = build_trainer(cfg)
    run = trainer.validate if cfg.split == "val" else trainer.test
    run(task, datamodule=datamodule, verbose=False)
    metrics = scalars(trainer.callback_metrics, prefix=f"{cfg.split}/")
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("%s metrics of %s: %s", cfg.split, cfg.ckpt_path, format_metrics(metrics))
    return metrics
