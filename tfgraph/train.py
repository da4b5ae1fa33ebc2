"""``train(cfg) -> metrics``: the pure function behind ``tfgraph-train`` (a test or a sweeper calls it too).

One run: the data (its tokenizer trained on the training split), the model config completed with the
tokenizer's vocabulary size, the task, the Lightning Trainer with its callbacks and loggers, ``fit``, then
``test`` on the best checkpoint and, for a language model, a generated sample. Everything is written under
``cfg.paths.output_dir``: ``run_info.json`` (the model's parameters and FLOPs per token, once it is built) and
``metrics.json`` (at the end) among it, which a sweep's summary reads.

The model config is built on the ``meta`` device before any weight exists: before the data is read (every
config mistake, and a model over ``max_params`` or the machine's memory even without its vocabulary, fails fast),
and again once the tokenizer's vocabulary size is known (the exact parameter budget and memory). The parts live
in modules named for them:
the checks in :mod:`tfgraph.run_checks`, the DataModule in :mod:`tfgraph.run_data`, the Trainer in
:mod:`tfgraph.trainer`, the counting in :mod:`tfgraph.flops`, the callbacks in :mod:`tfgraph.tasks.callbacks`.
"""

from __future__ import annotations

import copy
import logging
import sys
import types
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from tfgraph.config import OVERRIDE_KEY, check_resolvable, compose, plain, prepare_output_dir
from tfgraph.flops import meta_model, model_info
from tfgraph.registry import ConfigError, load_plugins
from tfgraph.run_checks import check_budget, check_config, check_lengths, check_optimized_metric
from tfgraph.run_data import absolute_paths, build_datamodule, checkpoint_datamodule, has_split, set_up
from tfgraph.sweeps import write_json
from tfgraph.tasks import (
    COMMON_ARGS,
    CausalLM,
    Task,
    build_task,
    check_resumable,
    load_checkpoint,
    load_task,
    trust_options,
)
from tfgraph.tasks.base import check_compile
from tfgraph.tasks.callbacks import StopOnDivergence, TrainingDiverged
from tfgraph.tasks.loggers import sync_csv_columns
from tfgraph.tasks.optim import check_optimizer
from tfgraph.trainer import build_trainer, check_memory, format_metrics, scalars, with_atomic_checkpoints

log = logging.getLogger(__name__)


class RunMetrics(dict):
    """What :func:`train` returns: the metrics, a plain ``dict[str, float]``, with the run's dir as ``run_dir``
    (``cfg.paths.output_dir``, or the ``outputs/<date>/<time>`` made for a config that left it unset)."""

    run_dir: Path


def train(cfg: DictConfig, *, overrides: Sequence[str] = ()) -> RunMetrics:
    """Train the task ``cfg`` describes and return the last validation and the test metrics.

    From Python (``tfgraph.train(tfgraph.compose([...]))``) the run logs as ``tfgraph-train`` does: its lines go
    to ``train.log`` in the run dir and, where no logging is set up, to stderr (:func:`run_log`).

    With ``cfg.ckpt_path`` the run resumes from that checkpoint: its model, task options, tokenizer, label
    names, data config, optimizer and scheduler come from the checkpoint (they must match its weights and
    optimizer state), and ``cfg`` setting any of them otherwise is a ConfigError naming each key
    (:func:`check_resumed_settings`); the trainer, callbacks and loggers come from ``cfg``.

    Args:
        cfg: a composed ``train`` config (``tfgraph.compose(overrides)``); not modified.
        overrides: the overrides ``cfg`` was composed with (``tfgraph-train`` passes its command line's): with
            ``ckpt_path``, each that sets a model, task, data, optimizer or scheduler key is checked against the
            checkpoint, also one that gives a key its default value.

    Returns:
        ``{"train/loss": ..., "val/loss": ..., "test/...": ...}``, as floats; ``.run_dir`` is where the run wrote
        (checkpoints/last.ckpt, metrics.json, train.log, ...).

    Raises:
        tfgraph.ConfigError: for a config mistake (the task does not fit the model or the data, a model over
            ``max_params``, an interpolation that does not resolve, an output dir that cannot be written, ...).
        tfgraph.data.DataError: for missing or malformed data.
        TrainingDiverged: when the training loss (or the weights about to be saved) stops being finite; no
            checkpoint holds the diverged weights.
    """
    cfg = copy.deepcopy(cfg)
    check_resolvable(cfg)  # every interpolation, before a step runs (sample.prompt is only read at the end)
    output_dir = prepare_output_dir(cfg)
    with run_log(output_dir):
        metrics = RunMetrics(_run(cfg, output_dir, overrides))
    metrics.run_dir = output_dir
    return metrics


def _run(cfg: DictConfig, output_dir: Path, overrides: Sequence[str] = ()) -> dict[str, float]:
    """The run :func:`train` describes, in ``output_dir``."""
    load_plugins(cfg.get("plugins"), "plugins")
    max_params = check_config(cfg)
    compile_mode = check_compile(cfg.get("compile"))
    pl.seed_everything(cfg.seed, workers=True)
    trainer = build_trainer(cfg)  # first: a missing logger package is found before any data is read
    if not cfg.get("ckpt_path") and cfg.get("optimizer") is not None and trainer.strategy.root_device.type == "cpu":
        # a step on the CPU a run trains on (capturable=true); on a GPU, configure_optimizers' check takes it
        # there, and this process does not touch CUDA before a strategy forks
        check_optimizer(plain(cfg.optimizer), device="cpu")
    if not cfg.get("ckpt_path"):  # before the data is read: the model without its vocabulary's embeddings
        params = meta_model({**plain(cfg.model), "vocab_size": 1}).num_parameters()
        check_memory(params, trainer, plain(cfg.get("optimizer")), "before its vocabulary's embeddings")
    if cfg.get("ckpt_path") and cfg.get("init_from"):
        raise ConfigError.at(
            "init_from", "a resumed run (ckpt_path) takes its weights from the checkpoint; drop init_from"
        )
    if cfg.get("ckpt_path"):  # checked here, before Lightning's fit reads the file again
        task, datamodule = resume(cfg.ckpt_path, given=cfg, overrides=overrides, **trust_options(cfg))
    else:
        task, datamodule = build(cfg, trainer, max_params)
        if cfg.get("init_from"):
            from tfgraph.interop import init_from

            log.info("initialised from %s", init_from(task.model, cfg.init_from))
    check_optimized_metric(cfg, task)
    task.compile_mode = compile_mode  # Task.configure_model compiles, in each process
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
        write_sample(cfg, task, output_dir)
        write_json(output_dir / "metrics.json", metrics)
        last = output_dir / "checkpoints" / "last.ckpt"
        log.info("run dir %s%s", output_dir, f"; resume or evaluate from {last}" if last.is_file() else "")
    return metrics


@contextmanager
def run_log(output_dir: Path) -> Iterator[None]:
    """The run's log lines (tfgraph's and Lightning's, at INFO) in ``output_dir/train.log`` and, where the root
    logger has no handler yet (plain Python), on stderr, for the length of the run; the logging set-up as it was
    after. Under ``tfgraph-train`` Hydra's job logging already writes that file, and nothing is added."""
    root = logging.getLogger()
    log_file = (output_dir / "train.log").resolve()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve() == log_file for h in root.handlers):
        yield
        return
    form = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")  # as Hydra's job log
    added: list[logging.Handler] = [logging.FileHandler(log_file)]
    if not root.handlers:
        added.append(logging.StreamHandler(sys.stderr))
    level = root.level
    if level > logging.INFO:
        root.setLevel(logging.INFO)
    for handler in added:
        handler.setFormatter(form)
        handler.setLevel(logging.INFO)
        root.addHandler(handler)
    try:
        yield
    finally:
        for handler in added:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)


def write_sample(cfg: DictConfig, task: Task, output_dir: Path) -> None:
    """A language model's continuation of ``cfg.sample.prompt``, in ``sample.txt`` and the log (nothing for
    other tasks or ``sample.max_new_tokens=0``)."""
    sample = cfg.get("sample") or {}
    if not (isinstance(task, CausalLM) and sample.get("max_new_tokens")):
        return
    drawn = {"strategy": "sample", "temperature": sample.temperature, "top_k": sample.top_k, "seed": cfg.seed}
    options = drawn if sample.temperature else {"strategy": "greedy"}  # temperature 0: the most likely
    text = task.generate(sample.prompt or "", sample.max_new_tokens, **options)
    (output_dir / "sample.txt").write_text(text)
    log.info("sample (temperature %s):\n%s", sample.temperature, text)


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


def build(cfg: DictConfig, trainer: pl.Trainer, max_params: int | None = None) -> tuple[Task, pl.LightningDataModule]:
    """The task and its data from a config (checked by :func:`~tfgraph.run_checks.check_config`): the data set
    up first, its vocabulary size into the model config; the model's parameters counted on ``meta`` against
    ``max_params`` and the memory ``trainer`` has (:func:`~tfgraph.trainer.check_memory`) before they exist."""
    task_cfg = plain(cfg.task)
    data_cfg = absolute_paths(plain(cfg.data))
    datamodule = set_up(build_datamodule(data_cfg), task_cfg.get("name"), "fit")
    model_cfg = plain(cfg.model)
    model_cfg["vocab_size"] = datamodule.tokenizer.vocab_size
    check_lengths(task_cfg.get("name"), model_cfg, data_cfg)
    params = meta_model(model_cfg).num_parameters()
    if max_params is not None:
        check_budget(params, max_params, f"has {params:,} parameters with the data's {model_cfg['vocab_size']} ids")
    check_memory(params, trainer, plain(cfg.get("optimizer")), f"with the data's {model_cfg['vocab_size']} ids")
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
    ckpt_path: str,
    *,
    given: DictConfig | None = None,
    overrides: Sequence[str] = (),
    trust_plugins: bool = False,
    plugins: Collection[str] = (),
) -> tuple[Task, pl.LightningDataModule]:
    """The task and data of a checkpoint, checked as :func:`tfgraph.tasks.load_checkpoint` checks it (``Trainer.fit``
    then loads its training state; ``trust_plugins`` and ``plugins``: what the checkpoint may import); ``given``:
    the run's config, whose settings of what the checkpoint decides must not differ from it, and ``overrides``
    those it was composed with (:func:`check_resumed_settings`)."""
    checkpoint = load_checkpoint(ckpt_path, trust_plugins=trust_plugins, plugins=plugins)
    check_resumable(checkpoint, where=str(ckpt_path))
    if given is not None:
        check_resumed_settings(given, checkpoint, where=str(ckpt_path), overrides=overrides)
    name = checkpoint["tfgraph"]["task"]
    log.info(
        "resuming %s from step %d; model, task, tokenizer and data as in the checkpoint",
        name,
        checkpoint["global_step"],
    )
    datamodule = checkpoint_datamodule(checkpoint, where=str(ckpt_path), trust_plugins=trust_plugins)
    set_up(datamodule, name, "fit")
    return load_task(checkpoint, trust_plugins=trust_plugins, plugins=plugins, where=str(ckpt_path)), datamodule


RESUMED_PARTS = ("model", "task", "data", "optimizer", "scheduler")  # what a resumed run takes from its checkpoint
SET_BY_THE_DATA = ("model.vocab_size",)  # the tokenizer's, in every run: a config's value is never used


def check_resumed_settings(
    cfg: DictConfig, checkpoint: Mapping[str, Any], *, where: str, overrides: Sequence[str] = ()
) -> None:
    """Refuse a resumed run whose config sets a model, task, data, optimizer or scheduler value other than the
    checkpoint's: the run would silently continue with the checkpoint's (Lightning restores the optimizer's and
    the schedule's state, learning rate included, and the weights fit the checkpoint's model alone).

    A value counts as set when one of ``overrides`` names it or a node above it (``optimizer.lr=3e-3``,
    ``optimizer=sgd``, ``model/norm=rmsnorm``), or when it differs from the package's default config
    (``tfgraph.compose()``: what an ``experiment=...`` or the Python caller's own overrides changed). Resuming with
    no override at all, or with the very overrides the run was started with, passes; ``optimizer.lr=1e-4`` or
    ``data.block_size=64`` on top of them does not.

    Raises:
        tfgraph.ConfigError: one problem per differing key (what was given, what the checkpoint has), and one at
            ``ckpt_path`` saying what to do instead.
    """
    hparams = checkpoint["hyper_parameters"]
    options = {key: value for key, value in hparams.items() if key not in COMMON_ARGS}
    stored = {
        "model": hparams.get("model"),
        "task": {"name": checkpoint["tfgraph"]["task"], **options},
        "data": hparams.get("data"),
        "optimizer": hparams.get("optimizer"),
        "scheduler": hparams.get("scheduler"),
    }
    default = compose()

    def part(config: DictConfig, name: str) -> Any:
        value = plain(config.get(name))
        return absolute_paths(value) if name == "data" else value

    named = [_override_key(line) for line in overrides]

    def set_here(key: str, value: Any, usual: Mapping[str, Any]) -> bool:
        return any(key == n or key.startswith(n + ".") for n in named) or key not in usual or value != usual[key]

    problems = []
    for name in RESUMED_PARTS:
        given, was, usual = (
            _leaves(part(cfg, name), name),
            _leaves(stored[name], name),
            _leaves(part(default, name), name),
        )
        problems += [
            (key, f"given {value!r}, but the checkpoint has {was[key]!r}")
            for key, value in given.items()
            if key in was and value != was[key] and set_here(key, value, usual) and key not in SET_BY_THE_DATA
        ]
    if problems:
        problems.append(
            (
                "ckpt_path",
                f"{where}: a resumed run continues with the checkpoint's model, task, data, optimizer and schedule "
                "(their state restored with them), not the ones given: drop these overrides to resume, or train "
                f"anew from its weights with init_from={where} in place of ckpt_path",
            )
        )
        raise ConfigError(problems)


def _override_key(line: str) -> str:
    """The config key an override sets: ``+optimizer.lr=1e-3`` -> ``optimizer.lr``, ``model/norm=rmsnorm`` ->
    ``model.norm``, ``optimizer@x=sgd`` -> ``optimizer`` ("" for a line that is not an override)."""
    key = OVERRIDE_KEY.match(line)
    return key[1].split("@")[0].replace("/", ".") if key else ""


def _leaves(node: Any, path: str) -> dict[str, Any]:
    """``{"optimizer.lr": 0.003, ...}``: the values of a plain config by their key path (a list is one value)."""
    if not isinstance(node, Mapping):
        return {path: node}
    return {key: value for name, child in node.items() for key, value in _leaves(child, f"{path}.{name}").items()}


__all__ = [
    "StopOnDivergence",
    "TrainingDiverged",
    "build_datamodule",
    "build_trainer",
    "model_info",
    "own_checkpoint",
    "train",
    "with_atomic_checkpoints",
]


class _CallableModule(types.ModuleType):
    """This module, callable as its :func:`train`: ``tfgraph.train(cfg)`` (the package's export) and
    ``tfgraph.train.train(cfg)`` are one function, whichever of them was imported first."""

    def __call__(self, cfg: DictConfig, *, overrides: Sequence[str] = ()) -> RunMetrics:
        return self.train(cfg, overrides=overrides)


sys.modules[__name__].__class__ = _CallableModule
