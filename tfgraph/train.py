"""``train(cfg) -> metrics``: the pure function behind ``tfgraph-train`` (a test or a sweeper calls it too).

One run: the data (its tokenizer trained on the training split), the model config completed with the
tokenizer's vocabulary size, the task, the Lightning Trainer with its callbacks and loggers, ``fit``, then
``test`` on the best checkpoint and, for a language model, a generated sample. Everything is written under
``cfg.paths.output_dir``: ``run_info.json`` (the model's parameters and FLOPs per token, once it is built) and
``metrics.json`` (at the end) among it, which a sweep's summary reads.

The model config is built on the ``meta`` device twice before any weight exists: before the data is read (every
config mistake, and a model over ``max_params`` even without its vocabulary, fails fast), and once the
tokenizer's vocabulary size is known (the exact parameter budget).
"""

from __future__ import annotations

import copy
import csv
import datetime
import glob
import inspect
import logging
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelSummary, ProgressBar
from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.plugins.io import CheckpointIO
from pytorch_lightning.utilities.model_helpers import is_overridden

from tfgraph.data import DataError
from tfgraph.models import Transformer, build_model
from tfgraph.registry import ConfigError, Problems, load_plugins, suggest
from tfgraph.show import MAX_LEN_COUNTED, count_flops
from tfgraph.sweeps import write_json
from tfgraph.tasks import (
    CausalLM,
    Task,
    build_task,
    check_resumable,
    data_module_class,
    load_checkpoint,
    load_task,
    stored_locations,
    task_class,
    trust_options,
)
from tfgraph.tasks.callbacks import (
    AtomicCheckpointIO,
    ContinueLogs,
    StopOnDivergence,
    TrainingDiverged,
    ValidateAtLastStep,
)
from tfgraph.tasks.optim import check_optimizer, check_scheduler

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
        tfgraph.ConfigError: for a config mistake (the task does not fit the model or the data, a model over
            ``max_params``, ...).
        tfgraph.data.DataError: for missing or malformed data.
        TrainingDiverged: when the training loss (or the weights about to be saved) stops being finite; no
            checkpoint holds the diverged weights.
    """
    cfg = copy.deepcopy(cfg)
    output_dir = prepare_output_dir(cfg)
    load_plugins(cfg.get("plugins"), "plugins")
    max_params = check_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    trainer = build_trainer(cfg)  # first: a missing logger package is found before any data is read
    if cfg.get("ckpt_path"):  # checked here, before Lightning's fit reads the file again
        task, datamodule = resume(cfg.ckpt_path, **trust_options(cfg))
    else:
        task, datamodule = build(cfg, max_params)
    check_optimized_metric(cfg, task)
    tokenizer = datamodule.tokenizer
    tokenizer.save(output_dir / "tokenizer.json")
    log.info("data %s: %s tokenizer, %d ids", datamodule.name, tokenizer.kind, tokenizer.vocab_size)
    info = model_info(task.hparams.model)
    if trainer.is_global_zero:
        write_json(output_dir / "run_info.json", info)
    log.info(
        "%s model, %s parameters, %s forward FLOPs per token",
        task.model.topology,
        f"{task.model.num_parameters():,}",
        "n/a" if info["flops_per_token"] is None else f"{info['flops_per_token']:,.0f}",
    )

    for logger in trainer.loggers:
        logger.log_hyperparams({**plain(cfg), "params": task.model.num_parameters()})
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics = scalars(trainer.callback_metrics)

    if cfg.get("test") and has_split(datamodule, "test"):
        sync_csv_columns(trainer)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        best = own_checkpoint(best, output_dir, cfg.get("ckpt_path"))
        trainer.test(task, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False)
        metrics.update(scalars(trainer.callback_metrics, prefix="test/"))
        log.info("test (%s): %s", best or "last weights", format_metrics(metrics, "test/"))

    if trainer.is_global_zero:
        sample = cfg.get("sample") or {}
        if isinstance(task, CausalLM) and sample.get("max_new_tokens"):
            drawn = {"strategy": "sample", "temperature": sample.temperature, "top_k": sample.top_k, "seed": cfg.seed}
            options = drawn if sample.temperature else {"strategy": "greedy"}  # temperature 0: the most likely
            text = task.generate(sample.prompt or "", sample.max_new_tokens, **options)
            (output_dir / "sample.txt").write_text(text)
            log.info("sample (temperature %s):\n%s", sample.temperature, text)
        write_json(output_dir / "metrics.json", metrics)
        last = output_dir / "checkpoints" / "last.ckpt"
        log.info("run dir %s%s", output_dir, f"; resume or evaluate from {last}" if last.is_file() else "")
    return metrics


def own_checkpoint(path: str, output_dir: Path, resumed_from: str | None) -> str:
    """``path`` when it lies in this run's dir or beside the checkpoint it resumed from, else "" (the last weights
    are tested): a resumed checkpoint's callback state names its best checkpoint, and a crafted one could name any
    file."""
    if not path:
        return ""
    dirs = [output_dir] + ([Path(resumed_from).parent] if resumed_from else [])
    if any(Path(path).resolve().is_relative_to(d.resolve()) for d in dirs):
        return path
    log.warning(
        "not testing %s, which the resumed checkpoint names as its best: it is not in a run dir of this run", path
    )
    return ""


def check_config(cfg: DictConfig) -> int | None:
    """Every check that needs no data, all of them reported together in one ConfigError: ``optimized_mode``,
    the optimizer and schedule, and (a new run) whether the task takes the model's topology, ``max_params`` and
    the model itself, built on the ``meta`` device. Returns the parameter budget (None: none)."""
    problems = Problems()
    collect = problems.collect
    max_params = None
    collect(check_optimized_mode, cfg)
    collect(check_trainer_values, cfg.get("trainer"))
    collect(check_run_values, cfg)
    collect(check_optimization, cfg)
    if not cfg.get("ckpt_path"):
        collect(lambda: task_class(cfg.task.get("name")).check_topology(cfg.model.get("topology")))
        max_params = collect(check_max_params, cfg.get("max_params"))
        collect(check_model, plain(cfg.model), max_params)
    problems.raise_if_any()
    return max_params


def build(cfg: DictConfig, max_params: int | None = None) -> tuple[Task, pl.LightningDataModule]:
    """The task and its data from a config (checked by :func:`check_config`): the data set up first, its
    vocabulary size into the model config."""
    task_cfg = plain(cfg.task)
    data_cfg = absolute_paths(plain(cfg.data))
    datamodule = build_datamodule(data_cfg)
    check_fits(task_cfg.get("name"), datamodule)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model_cfg = plain(cfg.model)
    model_cfg["vocab_size"] = datamodule.tokenizer.vocab_size
    check_lengths(task_cfg.get("name"), model_cfg, data_cfg)
    if max_params is not None:
        params = meta_model(model_cfg).num_parameters()
        check_budget(params, max_params, f"has {params:,} parameters with the data's {model_cfg['vocab_size']} ids")
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


def resume(
    ckpt_path: str, *, trust_plugins: bool = False, plugins: Collection[str] = ()
) -> tuple[Task, pl.LightningDataModule]:
    """The task and data of a checkpoint, checked as :func:`tfgraph.tasks.load_checkpoint` checks it (``Trainer.fit``
    then loads its training state; ``trust_plugins`` and ``plugins``: what the checkpoint may import)."""
    checkpoint = load_checkpoint(ckpt_path, trust_plugins=trust_plugins, plugins=plugins)
    check_resumable(checkpoint, where=str(ckpt_path))
    name = checkpoint["tfgraph"]["task"]
    log.info(
        "resuming %s from step %d; model, task, tokenizer and data as in the checkpoint",
        name,
        checkpoint["global_step"],
    )
    datamodule = checkpoint_datamodule(checkpoint, where=str(ckpt_path), trust_plugins=trust_plugins)
    check_fits(name, datamodule)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return load_task(checkpoint, trust_plugins=trust_plugins, plugins=plugins, where=str(ckpt_path)), datamodule


# --------------------------------------------------------------------------------- the model before its weights


def meta_model(model_cfg: Mapping[str, Any]) -> Transformer:
    """The model of a plain model config on the ``meta`` device: checked and counted, no memory allocated."""
    with torch.device("meta"):
        return build_model(model_cfg)


def check_max_params(value: Any) -> int | None:
    """``max_params`` as an int (``null``: no budget); a ConfigError for anything but a positive whole number."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # max_params=1e6 on the command line
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError([("max_params", f"expected a positive number of parameters or null, got {value!r}")])
    return value


def check_model(model_cfg: dict[str, Any], max_params: int | None) -> None:
    """Check a model config before any data is read: build it on ``meta`` without its vocabulary (vocab_size 1,
    the tokenizer's size comes with the data), which raises every config mistake, and refuse a model that is
    over ``max_params`` even so (the embeddings only add parameters)."""
    params = meta_model({**model_cfg, "vocab_size": 1}).num_parameters()
    if max_params is not None:
        check_budget(params, max_params, f"has at least {params:,} parameters before its vocabulary's embeddings")


def check_budget(params: int, max_params: int, what: str) -> None:
    """Refuse a model with more than ``max_params`` parameters (``what``: how many it has)."""
    if params > max_params:
        raise ConfigError(
            [
                (
                    "max_params",
                    f"the model {what}, over the budget of {max_params:,}: shrink it (model.d_model, "
                    "model.n_layers, model.d_ff, ...) or raise max_params",
                )
            ]
        )


def model_info(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The model's parameters and forward FLOPs per token, counted on ``meta`` as ``tfgraph-show`` counts them
    (at sequence length ``min(model.max_len, 1024)``; ``flops_per_token`` is None where they cannot be counted)."""
    model = meta_model(model_cfg)
    seq_len = min(model.spec.sizes["max_len"], MAX_LEN_COUNTED)
    flops = count_flops(model, model_cfg, seq_len)
    return {
        "topology": model.topology,
        "params": model.num_parameters(),
        "flops_per_token": flops.per_token(""),
        "flops_seq_len": seq_len,
        "vocab_size": model.spec.sizes["vocab_size"],
    }


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
    data_cfg: Mapping[str, Any] | None,
    *,
    tokenizer: str | None = None,
    label_names: list[str] | None = None,
    cls: type[pl.LightningDataModule] | None = None,
) -> pl.LightningDataModule:
    """The DataModule a data config names (``_target_``), optionally reusing a tokenizer and labels.

    Args:
        data_cfg: the ``data`` node as plain containers.
        tokenizer: a tokenizer's JSON (from a checkpoint) to use instead of training one.
        label_names: the label names of a checkpoint, so that label ids mean what they meant in training.
        cls: the class to call with the config's options as they are, for a checkpoint's data (looked up by
            :func:`tfgraph.tasks.data_module_class`, never instantiated by Hydra); None: Hydra instantiates the
            ``_target_`` of a user's config.
    """
    if not data_cfg or "_target_" not in data_cfg:
        raise ConfigError([("data", "no data config: choose one, e.g. data=text data.path=book.txt")])
    data_cfg = dict(data_cfg)
    if tokenizer is not None:
        data_cfg["tokenizer_json"] = tokenizer
        data_cfg.pop("tokenizer_path", None)
    if label_names is not None and "label_names" in data_cfg:
        data_cfg["label_names"] = list(label_names)
    if cls is not None:
        options = {key: value for key, value in data_cfg.items() if key != "_target_"}
        try:
            return cls(**options)
        except (DataError, ConfigError):
            raise
        except (TypeError, ValueError) as err:
            raise ConfigError([("data", f"{cls.__name__}: {err}")]) from None
    try:
        return instantiate(data_cfg, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (DataError, ConfigError)):
            raise cause from None
        raise ConfigError([("data", str(cause or err))]) from err


def checkpoint_datamodule(
    checkpoint: Mapping[str, Any],
    *,
    where: str,
    overrides: Mapping[str, Any] | None = None,
    trust_plugins: bool = False,
) -> pl.LightningDataModule:
    """The DataModule of a checked checkpoint's data config, with its tokenizer and label names.

    Its class is one :func:`tfgraph.tasks.data_module_class` allows, called with the plain options (no Hydra).

    Args:
        checkpoint: as :func:`tfgraph.tasks.load_checkpoint` returned it.
        where: the checkpoint's path, for the messages.
        overrides: the user's keys over the checkpoint's (``tfgraph-eval +data.batch_size=64``); a ``_target_``
            among them is the user's choice, imported as any module of the user's config is.
        trust_plugins: let the checkpoint import the module of the class it names.
    """
    args = checkpoint["hyper_parameters"]
    overrides = dict(overrides or {})
    data_cfg = {**(args.get("data") or {}), **overrides}
    if "_target_" not in data_cfg:
        raise ConfigError([("data", f"{where} holds no data config: give one, e.g. +data._target_=...")])
    trusted = trust_plugins or "_target_" in overrides
    chosen = [] if trusted else stored_locations(args.get("data"), overrides)
    if chosen:
        raise ConfigError(
            [
                (
                    "ckpt_path",
                    f"{where}: {key} is set in the checkpoint: a checkpoint may not choose where files are written "
                    f"or what is fetched; set it yourself (tfgraph-eval +{key}=... or null), or trust_plugins=true",
                )
                for key in chosen
            ]
        )
    cls = data_module_class(data_cfg["_target_"], where=where, trust_plugins=trusted)
    return build_datamodule(data_cfg, tokenizer=args["tokenizer"], label_names=args.get("label_names"), cls=cls)


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


def check_optimization(cfg: DictConfig) -> None:
    """The ``optimizer`` and ``scheduler`` settings, values included, before the trainer or any data exists."""
    if cfg.get("optimizer") is not None:
        check_optimizer(plain(cfg.optimizer))
    if cfg.get("scheduler") is not None:
        check_scheduler(plain(cfg.scheduler))


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _share(value: Any) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


# the Trainer's counting settings: (what a value must be, the test) -- Lightning's own messages name no config key
TRAINER_VALUES: dict[str, tuple[str, Any]] = {
    "max_steps": ("-1 (no limit) or a positive number of steps", lambda v: _whole(v) and (v == -1 or v > 0)),
    "max_epochs": ("null, -1 (no limit) or a positive number of epochs", lambda v: v is None or _whole(v) and v >= -1),
    "val_check_interval": (
        "a positive number of steps, or a share of an epoch in (0, 1]",
        lambda v: v is None or _whole(v) and v > 0 or isinstance(v, float) and 0 < v <= 1,
    ),
    "check_val_every_n_epoch": ("null or a positive number of epochs", lambda v: v is None or _whole(v) and v > 0),
    "log_every_n_steps": ("a positive number of steps", lambda v: _whole(v) and v > 0),
    "accumulate_grad_batches": ("a positive number of batches", lambda v: _whole(v) and v > 0),
    "num_sanity_val_steps": ("-1 (all) or a number of batches >= 0", lambda v: _whole(v) and v >= -1),
    "gradient_clip_val": (
        "null or a number >= 0",
        lambda v: v is None or isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
    ),
    "devices": ("a positive number, a list of device indices, -1 or auto", lambda v: v != 0 and v is not None),
    "num_nodes": ("a positive number of machines", lambda v: _whole(v) and v > 0),
    **{
        f"limit_{split}_batches": (
            "null, a number of batches >= 0 or a share in [0, 1]",
            lambda v: v is None or _whole(v) and v >= 0 or _share(v),
        )
        for split in ("train", "val", "test", "predict")
    },
    "overfit_batches": ("a number of batches >= 0 or a share in [0, 1]", lambda v: _whole(v) and v >= 0 or _share(v)),
}


def check_trainer_values(trainer_cfg: DictConfig | None) -> None:
    """The Trainer's counting settings (steps, epochs, intervals, limits), each named by its key, before the
    Trainer exists: Lightning's own errors for them name no config key, and some (a negative ``max_steps`` among
    them) it takes without a word."""
    if trainer_cfg is None:
        return
    problems = []
    for key, (expected, fits) in TRAINER_VALUES.items():
        if key not in trainer_cfg or OmegaConf.is_missing(trainer_cfg, key):
            continue
        value = plain(trainer_cfg[key]) if OmegaConf.is_config(trainer_cfg[key]) else trainer_cfg[key]
        if not fits(value):
            problems.append((f"trainer.{key}", f"expected {expected}, got {value!r}"))
    if problems:
        raise ConfigError(problems)


def check_run_values(cfg: DictConfig) -> None:
    """``seed``, ``trust_plugins`` and the ``sample`` settings, before training: a sample drawn after a long run
    must not fail on a value that was wrong from the start."""
    problems = []

    def value(key: str) -> Any:
        return OmegaConf.select(cfg, key, throw_on_missing=False)

    seed = value("seed")
    if not _whole(seed):
        problems.append(("seed", f"expected a whole number, got {seed!r}"))
    if not isinstance(value("trust_plugins") or False, bool):
        problems.append(("trust_plugins", f"expected true or false, got {value('trust_plugins')!r}"))
    if cfg.get("sample") is not None:
        tokens, temperature, top_k = value("sample.max_new_tokens"), value("sample.temperature"), value("sample.top_k")
        if tokens is not None and not (_whole(tokens) and tokens >= 0):
            problems.append(
                ("sample.max_new_tokens", f"expected a number of tokens >= 0 (0: no sample), got {tokens!r}")
            )
        if temperature is not None and not (
            isinstance(temperature, (int, float))
            and not isinstance(temperature, bool)
            and 0 <= temperature < float("inf")
        ):
            problems.append(
                ("sample.temperature", f"expected a number >= 0 (0: the most likely tokens), got {temperature!r}")
            )
        if top_k is not None and not (_whole(top_k) and top_k >= 1):
            problems.append(("sample.top_k", f"expected null or a whole number >= 1, got {top_k!r}"))
    if problems:
        raise ConfigError(problems)


def check_optimized_mode(cfg: DictConfig) -> None:
    """``optimized_mode`` is ``min`` or ``max`` (checkpointing, early stopping and sweeps read it)."""
    mode = cfg.get("optimized_mode", "min")
    if mode not in ("min", "max"):
        raise ConfigError([("optimized_mode", f"expected min or max, got {mode!r}")])


def check_optimized_metric(cfg: DictConfig, task: Task) -> None:
    """Refuse an ``optimized_metric`` the task never logs (checkpointing and early stopping would fail on it
    after the first validation), listing those it does log."""
    metric = cfg.get("optimized_metric")
    if metric is None:
        return
    logged = [f"{stage}/{name}" for stage in ("train", "val") for name in task.metric_names(stage)]
    if metric in logged:
        return
    hint = ""
    if metric.split("/")[-1] in ("bleu", "chrf", "exact_match") and not task.hparams.get("generate", True):
        hint = " (bleu, chrf and exact_match come from decoding: task.generate=true)"
    raise ConfigError(
        [("optimized_metric", f"task {task.name} does not log {metric!r}{hint}; it logs {', '.join(logged)}")]
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
    # first: it sees each step's loss before a checkpoint of that step is taken
    callbacks = [StopOnDivergence(), *callbacks, ValidateAtLastStep(), *([ContinueLogs()] if loggers else [])]
    check_accelerator(cfg.trainer)
    try:
        plugins = with_atomic_checkpoints(cfg.trainer.get("plugins"))
        return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins, **overrides)
    except InstantiationException as err:
        problems = unknown_arguments(cfg.trainer, "trainer") or [("trainer", str(err.__cause__ or err))]
        raise ConfigError(problems) from err


def with_atomic_checkpoints(given: Any) -> list[Any]:
    """The trainer's ``plugins`` with :class:`~tfgraph.tasks.callbacks.AtomicCheckpointIO` unless one of them
    writes the checkpoints: every checkpoint file is written whole or not at all."""
    plugins = instantiate(given, _convert_="all") if OmegaConf.is_config(given) else given
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def unknown_arguments(node: DictConfig, path: str) -> list[tuple[str, str]]:
    """The keys of the instantiable config ``node`` (at ``path``) that its ``_target_`` takes no argument for, each
    with the closest arguments it does take (``+trainer.max_step=100``: ``trainer.max_step``, ``max_steps``)."""
    try:
        parameters = inspect.signature(get_class(str(node._target_))).parameters.values()
    except Exception:  # no class there: instantiating said why
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return []
    takes = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return [
        (f"{path}.{key}", f"{node._target_} takes no argument {key!r}{suggest(key, takes)}")
        for key in map(str, node)
        if not key.startswith("_") and key not in takes
    ]


def check_accelerator(trainer_cfg: DictConfig) -> None:
    """Refuse GPUs that are not there, and FSDP on a CPU, before Lightning does, naming the config key."""
    accelerator = str(trainer_cfg.get("accelerator"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            [
                (
                    "trainer.accelerator",
                    f"{accelerator}, but PyTorch finds no GPU here: use trainer=cpu, or trainer=ddp_sim to run "
                    "the distributed code paths on CPU processes",
                )
            ]
        )
    strategy = trainer_cfg.get("strategy")
    name = strategy.get("_target_", "") if OmegaConf.is_dict(strategy) else str(strategy or "")
    if "fsdp" in name.lower() and accelerator not in ("gpu", "cuda", "auto"):
        raise ConfigError(
            [
                (
                    "trainer.accelerator",
                    f"{accelerator}: Lightning's FSDP strategy (trainer=fsdp) runs on GPUs only; "
                    "on a CPU, trainer=ddp_sim runs the distributed code paths (DDP over gloo)",
                )
            ]
        )


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


def sync_csv_columns(trainer: pl.Trainer) -> None:
    """Tell each CSVLogger the columns its metrics.csv already has.

    A fit in spawned processes (trainer=ddp_sim) writes the file there, and the logger of this process never
    learns its columns; the next stage's rewrite of the file with new columns then fails (Lightning 2.6).
    """
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger) or not trainer.is_global_zero:
            continue
        writer = logger.experiment
        path = Path(writer.metrics_file_path)
        if path.is_file():
            with path.open(newline="") as f:
                columns = next(csv.reader(f), [])
            writer.metrics_keys = sorted(set(writer.metrics_keys) | set(columns))


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


__all__ = ["StopOnDivergence", "TrainingDiverged", "build_datamodule", "build_trainer", "model_info", "train"]
