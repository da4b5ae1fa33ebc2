"""``train(cfg) -> metrics``: the pure function behind ``tfgraph-train`` (a test or a sweeper calls it too).

One run: the data (its tokenizer trained on the training split), the model config completed with the
tokenizer's vocabulary size, the task, the Lightning Trainer with its callbacks and loggers, ``fit``, then
``test`` on the best checkpoint and, for a language model, a generated sample. Everything is written under
``cfg.paths.output_dir``.
"""

from __future__ import annotations

import copy
import datetime
import glob
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelSummary, ProgressBar
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.model_helpers import is_overridden

from tfgraph.data import DataError
from tfgraph.registry import ConfigError, load_plugins
from tfgraph.tasks import CausalLM, Task, build_task, load_checkpoint, task_class
from tfgraph.tasks.callbacks import ValidateAtLastStep

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train the task ``cfg`` describes and return the last validation and the test metrics.

    With ``cfg.ckpt_path`` the run resumes from that checkpoint: its model, task options, tokenizer, label
    names and data config come from the checkpoint (they must match its weights and optimizer state); the
    trainer, callbacks and loggers from ``cfg``.

    Args:
        cfg: a composed ``train`` config (``tfgraph.compose(overrides)``); not modified.

    Returns:
        ``{"train/loss": ..., "val/loss": ..., "test/...": ...}``, as floats.

    Raises:
        tfgraph.ConfigError: for a config mistake (the task does not fit the model or the data, ...).
        tfgraph.data.DataError: for missing or malformed data.
    """
    cfg = copy.deepcopy(cfg)
    output_dir = prepare_output_dir(cfg)
    load_plugins(cfg.get("plugins"), "plugins")
    pl.seed_everything(cfg.seed, workers=True)
    trainer = build_trainer(cfg)  # first: a missing logger package is found before any data is read
    task, datamodule = resume(cfg.ckpt_path) if cfg.get("ckpt_path") else build(cfg)
    tokenizer = datamodule.tokenizer
    tokenizer.save(output_dir / "tokenizer.json")
    log.info("data %s: %s tokenizer, %d ids", datamodule.name, tokenizer.kind, tokenizer.vocab_size)
    log.info("%s model, %s parameters", task.model.topology, f"{task.model.num_parameters():,}")

    for logger in trainer.loggers:
        logger.log_hyperparams({**plain(cfg), "params": task.model.num_parameters()})
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics = scalars(trainer.callback_metrics)

    if cfg.get("test") and has_split(datamodule, "test"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(task, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False)
        metrics.update(scalars(trainer.callback_metrics, prefix="test/"))
        log.info("test (%s): %s", best or "last weights", format_metrics(metrics, "test/"))

    if trainer.is_global_zero:
        sample = cfg.get("sample") or {}
        if isinstance(task, CausalLM) and sample.get("max_new_tokens"):
            text = task.generate(sample.prompt or "", sample.max_new_tokens, sample.temperature, sample.top_k)
            (output_dir / "sample.txt").write_text(text)
            log.info("sample (temperature %s):\n%s", sample.temperature, text)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        last = output_dir / "checkpoints" / "last.ckpt"
        log.info("run dir %s%s", output_dir, f"; resume or evaluate from {last}" if last.is_file() else "")
    return metrics


def build(cfg: DictConfig) -> tuple[Task, pl.LightningDataModule]:
    """The task and its data from a config: the data set up first, its vocabulary size into the model config."""
    task_cfg = plain(cfg.task)
    task_class(task_cfg.get("name")).check_topology(cfg.model.get("topology"))  # before any data is read
    data_cfg = absolute_paths(plain(cfg.data))
    datamodule = build_datamodule(data_cfg)
    check_fits(task_cfg.get("name"), datamodule)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model_cfg = plain(cfg.model)
    model_cfg["vocab_size"] = datamodule.tokenizer.vocab_size
    check_lengths(task_cfg.get("name"), model_cfg, data_cfg)
    task = build_task(
        task_cfg,
        model=model_cfg,
        tokenizer=datamodule.tokenizer.to_json(),
        label_names=datamodule.label_names,
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")),
        data=data_cfg,
    )
    return task, datamodule


def resume(ckpt_path: str) -> tuple[Task, pl.LightningDataModule]:
    """The task and data of a checkpoint (``Trainer.fit`` loads its weights and training state)."""
    checkpoint = load_checkpoint(ckpt_path)
    name, args = checkpoint["tfgraph"]["task"], checkpoint["hyper_parameters"]
    log.info(
        "resuming %s from step %d; model, task, tokenizer and data as in the checkpoint",
        name,
        checkpoint["global_step"],
    )
    datamodule = build_datamodule(args["data"], tokenizer=args["tokenizer"], label_names=args["label_names"])
    check_fits(name, datamodule)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return task_class(name)(**args), datamodule


# --------------------------------------------------------------------------------------------- the parts


def prepare_output_dir(cfg: DictConfig) -> Path:
    """The run's output dir (``cfg.paths.output_dir``; ``outputs/<date>/<time>`` when unset), created."""
    output_dir = OmegaConf.select(cfg, "paths.output_dir")
    if not output_dir:
        output_dir = str(Path("outputs", datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")).absolute())
        with open_dict(cfg):
            OmegaConf.update(cfg, "paths.output_dir", output_dir, force_add=True)
    path = Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def plain(node: Any) -> Any:
    """A config node as resolved plain containers, without Hydra's own node (None stays None)."""
    if node is None or not OmegaConf.is_config(node):
        return copy.deepcopy(node)
    container = OmegaConf.to_container(node, resolve=True)
    if isinstance(container, dict):
        container.pop("hydra", None)
    return container


def build_datamodule(
    data_cfg: Mapping[str, Any] | None, *, tokenizer: str | None = None, label_names: list[str] | None = None
) -> pl.LightningDataModule:
    """Instantiate the DataModule a data config names (``_target_``), optionally reusing a tokenizer and labels.

    Args:
        data_cfg: the ``data`` node as plain containers.
        tokenizer: a tokenizer's JSON (from a checkpoint) to use instead of training one.
        label_names: the label names of a checkpoint, so that label ids mean what they meant in training.
    """
    if not data_cfg or "_target_" not in data_cfg:
        raise ConfigError([("data", "no data config: choose one, e.g. data=text data.path=book.txt")])
    data_cfg = dict(data_cfg)
    if tokenizer is not None:
        data_cfg["tokenizer_json"] = tokenizer
        data_cfg.pop("tokenizer_path", None)
    if label_names is not None and "label_names" in data_cfg:
        data_cfg["label_names"] = list(label_names)
    try:
        return instantiate(data_cfg, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (DataError, ConfigError)):
            raise cause from None
        raise ConfigError([("data", str(cause or err))]) from err


def absolute_paths(data_cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    """The data config with its relative file paths (``*path`` keys naming existing files) made absolute, so
    that a checkpoint's copy finds the data from any working directory."""
    if not data_cfg:
        return data_cfg
    return {
        key: os.path.abspath(value)
        if key.endswith("path") and isinstance(value, str) and value and glob.glob(value) and not os.path.isabs(value)
        else value
        for key, value in data_cfg.items()
    }


def check_fits(task_name: str | None, datamodule: pl.LightningDataModule) -> None:
    """Refuse data that cannot feed the task, saying what it feeds."""
    fits = tuple(getattr(datamodule, "fits", ()))
    if task_name not in fits:
        raise ConfigError(
            [
                (
                    "data",
                    f"data {getattr(datamodule, 'name', type(datamodule).__name__)!r} feeds {', '.join(fits) or 'no task'}, "
                    f"not task {task_name}: choose data for {task_name}, or task={' or task='.join(fits)}",
                )
            ]
        )


def check_lengths(task_name: str | None, model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> None:
    """Refuse data whose longest sequence the model's positions do not reach."""
    key = "block_size" if "block_size" in data_cfg else "max_len"
    length = data_cfg.get(key)
    if not isinstance(length, int):
        return
    prefix_lm = task_name == "seq2seq" and model_cfg.get("topology") == "decoder_only"
    needed = 2 * length if prefix_lm else length  # a prefix LM reads `source <eos> target` (both up to max_len)
    if needed > model_cfg.get("max_len", needed):
        why = f"a prefix LM reads source and target together, up to 2 x data.{key}" if prefix_lm else f"data.{key}"
        raise ConfigError(
            [
                (
                    "model.max_len",
                    f"{model_cfg['max_len']} positions, but {why} = {needed} tokens: "
                    f"raise model.max_len or lower data.{key}",
                )
            ]
        )


def build_trainer(cfg: DictConfig, **overrides: Any) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` with the callbacks of ``cfg.callbacks`` and loggers of ``cfg.logger``."""
    callbacks = [instantiate_part(node, f"callbacks.{name}", Callback) for name, node in _entries(cfg, "callbacks")]
    loggers = [instantiate_part(node, f"logger.{name}", Logger) for name, node in _entries(cfg, "logger")]
    if cfg.trainer.get("enable_progress_bar") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if cfg.trainer.get("enable_model_summary") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ModelSummary)]
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks.append(ValidateAtLastStep())
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)


def _entries(cfg: DictConfig, group: str) -> list[tuple[str, Any]]:
    return [(name, node) for name, node in (cfg.get(group) or {}).items() if node is not None]


def instantiate_part(node: Any, path: str, kind: type) -> Any:
    """Instantiate one callback or logger, with a ConfigError for a node that is not one or a missing package."""
    if not OmegaConf.is_dict(node) or "_target_" not in node:
        raise ConfigError([(path, f"expected a {kind.__name__} config with a _target_, got {node!r}")])
    try:
        part = instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ImportError):
            how = f"pip install {cause.name}" if cause.name else str(cause)
            raise ConfigError([(path, f"needs a package that is not installed: {how}")]) from None
        raise ConfigError([(path, str(cause or err))]) from err
    if not isinstance(part, kind):
        raise ConfigError([(path, f"{node._target_} is not a {kind.__name__}")])
    return part


def has_split(datamodule: pl.LightningDataModule, split: str) -> bool:
    """Whether the DataModule has a non-empty ``split`` loader."""
    if not is_overridden(f"{split}_dataloader", datamodule, pl.LightningDataModule):
        return False
    datasets = getattr(datamodule, "datasets", None)
    if isinstance(datasets, Mapping):
        dataset = datasets.get(split)
        return dataset is not None and len(dataset) > 0
    return True


def scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Lightning's logged metrics (tensors) as floats, those starting with ``prefix``."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if key.startswith(prefix) and (not isinstance(value, torch.Tensor) or value.numel() == 1)
    }


def format_metrics(metrics: Mapping[str, float], prefix: str = "") -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k.startswith(prefix))


__all__ = ["build_datamodule", "build_trainer", "train"]
