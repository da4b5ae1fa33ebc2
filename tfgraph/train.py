"""``train(cfg) -> metrics``: the pure function behind ``tfgraph-train`` (a test or a sweeper calls it too).

One run: the data (its tokenizer trained on the training split), the model config completed with the
tokenizer's vocabulary size, the task, the Lightning Trainer with its callbacks and loggers, ``fit``, then
``test`` on the best checkpoint and, for a language model, a generated sample. Everything is written under
``cfg.paths.output_dir``: ``run_info.json`` (the model's parameters and FLOPs per token, once it is built) and
``metrics.json`` (at the end) among it, which a sweep's summary reads.

The model config is built on the ``meta`` device twice before any weight exists: before the data is read (every
config mistake, and a model over ``max_params`` even without its vocabulary, fails fast), and once the
tokenizer's vocabulary size is known (the exact parameter budget). The parts live in modules named for them:
the checks in :mod:`tfgraph.run_checks`, the DataModule in :mod:`tfgraph.run_data`, the Trainer in
:mod:`tfgraph.trainer`, the counting in :mod:`tfgraph.flops`, the callbacks in :mod:`tfgraph.tasks.callbacks`.
"""

from __future__ import annotations

import copy
import logging
import sys
import types
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from tfgraph.config import check_resolvable, plain, prepare_output_dir
from tfgraph.flops import meta_model, model_info
from tfgraph.registry import ConfigError, load_plugins
from tfgraph.run_checks import check_budget, check_config, check_lengths, check_optimized_metric
from tfgraph.run_data import absolute_paths, build_datamodule, checkpoint_datamodule, has_split, set_up
from tfgraph.sweeps import write_json
from tfgraph.tasks import CausalLM, Task, build_task, check_resumable, load_checkpoint, load_task, trust_options
from tfgraph.tasks.base import check_compile
from tfgraph.tasks.callbacks import StopOnDivergence, TrainingDiverged
from tfgraph.tasks.loggers import sync_csv_columns
from tfgraph.tasks.optim import check_optimizer
from tfgraph.trainer import build_trainer, format_metrics, scalars, with_atomic_checkpoints

log = logging.getLogger(__name__)


class RunMetrics(dict):
    """What :func:`train` returns: the metrics, a plain ``dict[str, float]``, with the run's dir as ``run_dir``
    (``cfg.paths.output_dir``, or the ``outputs/<date>/<time>`` made for a config that left it unset)."""

    run_dir: Path


def train(cfg: DictConfig) -> RunMetrics:
    """Train the task ``cfg`` describes and return the last validation and the test metrics.

    From Python (``tfgraph.train(tfgraph.compose([...]))``) the run logs as ``tfgraph-train`` does: its lines go
    to ``train.log`` in the run dir and, where no logging is set up, to stderr (:func:`run_log`).

    With ``cfg.ckpt_path`` the run resumes from that checkpoint: its model, task options, tokenizer, label
    names and data config come from the checkpoint (they must match its weights and optimizer state); the
    trainer, callbacks and loggers from ``cfg``.

    Args:
        cfg: a composed ``train`` config (``tfgraph.compose(overrides)``); not modified.

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
        metrics = RunMetrics(_run(cfg, output_dir))
    metrics.run_dir = output_dir
    return metrics


def _run(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
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
    if cfg.get("ckpt_path") and cfg.get("init_from"):
        raise ConfigError.at(
            "init_from", "a resumed run (ckpt_path) takes its weights from the checkpoint; drop init_from"
        )
    if cfg.get("ckpt_path"):  # checked here, before Lightning's fit reads the file again
        task, datamodule = resume(cfg.ckpt_path, **trust_options(cfg))
    else:
        task, datamodule = build(cfg, max_params)
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


def build(cfg: DictConfig, max_params: int | None = None) -> tuple[Task, pl.LightningDataModule]:
    """The task and its data from a config (checked by :func:`~tfgraph.run_checks.check_config`): the data set
    up first, its vocabulary size into the model config."""
    task_cfg = plain(cfg.task)
    data_cfg = absolute_paths(plain(cfg.data))
    datamodule = set_up(build_datamodule(data_cfg), task_cfg.get("name"), "fit")
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
    set_up(datamodule, name, "fit")
    return load_task(checkpoint, trust_plugins=trust_plugins, plugins=plugins, where=str(ckpt_path)), datamodule


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

    def __call__(self, cfg: DictConfig) -> RunMetrics:
        return self.train(cfg)


sys.modules[__name__].__class__ = _CallableModule
