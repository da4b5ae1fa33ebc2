"""What ``tfgraph-train`` and ``tfgraph-eval`` check before they read data or start a Trainer.

:func:`check_config` runs every check that needs no data and reports all their problems together in one
:class:`tfgraph.ConfigError`: ``optimized_mode``, the Trainer's counting settings (Lightning's own errors for them
name no config key), ``seed``, ``trust_plugins`` and the ``sample`` settings, the optimizer and schedule and, for a
new run, whether the task takes the model's topology, ``max_params`` and the model itself, built on the ``meta``
device, and seq2seq's ``task.metrics`` and beams. The rest need what a run has built: whether the data feeds the task (:func:`check_fits`) and fits the
model's positions (:func:`check_lengths`), whether the task logs ``optimized_metric``
(:func:`check_optimized_metric`), whether the accelerator is there (:func:`check_accelerator`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from tfgraph.config import plain
from tfgraph.flops import meta_model
from tfgraph.registry import ConfigError, Problems
from tfgraph.sweeps import KEEP_CHECKPOINTS
from tfgraph.tasks import task_class
from tfgraph.tasks.optim import check_optimizer, check_scheduler
from tfgraph.tasks.seq2seq import check_decoding

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from tfgraph.tasks import Task


def check_config(cfg: DictConfig) -> int | None:
    """Every check that needs no data, all of them reported together in one ConfigError: ``optimized_mode``,
    the Trainer's and the run's values, the optimizer and schedule, and (a new run) whether the task takes the
    model's topology, ``max_params`` and the model itself, built on the ``meta`` device. Returns the parameter
    budget (None: none)."""
    problems = Problems()
    collect = problems.collect
    max_params = None
    collect(check_optimized_mode, cfg)
    collect(check_trainer_values, cfg.get("trainer"))
    collect(check_run_values, cfg)
    collect(check_optimization, cfg)
    if not cfg.get("ckpt_path"):
        collect(lambda: task_class(cfg.task.get("name")).check_topology(cfg.model.get("topology")))
        collect(check_task_decoding, cfg.get("task"))
        max_params = collect(check_max_params, cfg.get("max_params"))
        collect(check_model, plain(cfg.model), max_params)
    problems.raise_if_any()
    return max_params


def check_task_decoding(task_cfg: DictConfig | None) -> None:
    """seq2seq's ``task.metrics`` (each a metric it scores, the unknown ones listed with those it has) and beam
    settings, before any data is read (the task checks them again when built)."""
    if task_cfg is None or task_cfg.get("name") != "seq2seq":
        return
    given = plain(task_cfg)
    keys = ("metrics", "num_beams", "test_num_beams", "length_penalty")
    check_decoding(**{key: given[key] for key in keys if key in given})


# --------------------------------------------------------------------------------- the model before its weights


def check_max_params(value: Any) -> int | None:
    """``max_params`` as an int (``null``: no budget); a ConfigError for anything but a positive whole number."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # max_params=1e6 on the command line
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError.at("max_params", f"expected a positive number of parameters or null, got {value!r}")
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
        raise ConfigError.at(
            "max_params",
            f"the model {what}, over the budget of {max_params:,}: shrink it (model.d_model, "
            "model.n_layers, model.d_ff, ...) or raise max_params",
        )


# --------------------------------------------------------------------------------------------- the data


def check_fits(task_name: str | None, datamodule: pl.LightningDataModule) -> None:
    """Refuse data that cannot feed the task, saying what it feeds."""
    fits = tuple(getattr(datamodule, "fits", ()))
    if task_name not in fits:
        raise ConfigError.at(
            "data",
            f"data {getattr(datamodule, 'name', type(datamodule).__name__)!r} feeds {', '.join(fits) or 'no task'}, "
            f"not task {task_name}: choose data for {task_name}, or task={' or task='.join(fits)}",
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
        raise ConfigError.at(
            "model.max_len",
            f"{model_cfg['max_len']} positions, but {why} = {needed} tokens: raise model.max_len or lower data.{key}",
        )


# --------------------------------------------------------------------------------------------- the run's values


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


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
    "gradient_clip_val": ("null or a number >= 0", lambda v: v is None or _number(v) and v >= 0),
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


# the sample drawn after training: (what a value must be, the test), each checked where it is set
SAMPLE_VALUES: dict[str, tuple[str, Any]] = {
    "max_new_tokens": ("a number of tokens >= 0 (0: no sample)", lambda v: _whole(v) and v >= 0),
    "temperature": ("a number >= 0 (0: the most likely tokens)", lambda v: _number(v) and 0 <= v < float("inf")),
    "top_k": ("null or a whole number >= 1", lambda v: _whole(v) and v >= 1),
}


def check_run_values(cfg: DictConfig) -> None:
    """``seed``, ``trust_plugins``, ``sweep_checkpoints`` and the ``sample`` settings, before training: a sample drawn after a long run
    must not fail on a value that was wrong from the start."""
    problems = []

    def value(key: str) -> Any:
        return OmegaConf.select(cfg, key, throw_on_missing=False)

    if not _whole(value("seed")):
        problems.append(("seed", f"expected a whole number, got {value('seed')!r}"))
    if not isinstance(value("trust_plugins") or False, bool):
        problems.append(("trust_plugins", f"expected true or false, got {value('trust_plugins')!r}"))
    if value("sweep_checkpoints") not in (None, *KEEP_CHECKPOINTS):
        problems.append(
            ("sweep_checkpoints", f"expected one of {', '.join(KEEP_CHECKPOINTS)}, got {value('sweep_checkpoints')!r}")
        )
    if cfg.get("sample") is not None:
        for key, (expected, fits) in SAMPLE_VALUES.items():
            given = value(f"sample.{key}")
            if given is not None and not fits(given):
                problems.append((f"sample.{key}", f"expected {expected}, got {given!r}"))
    if problems:
        raise ConfigError(problems)


def check_optimized_mode(cfg: DictConfig) -> None:
    """``optimized_mode`` is ``min`` or ``max`` (checkpointing, early stopping and sweeps read it)."""
    mode = cfg.get("optimized_mode", "min")
    if mode not in ("min", "max"):
        raise ConfigError.at("optimized_mode", f"expected min or max, got {mode!r}")


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
    raise ConfigError.at(
        "optimized_metric", f"task {task.name} does not log {metric!r}{hint}; it logs {', '.join(logged)}"
    )


def check_accelerator(trainer_cfg: DictConfig) -> None:
    """Refuse GPUs that are not there, and FSDP on a CPU (but the spawned ``trainer=fsdp_sim``), before Lightning
    does, naming the config key."""
    accelerator = str(trainer_cfg.get("accelerator"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError.at(
            "trainer.accelerator",
            f"{accelerator}, but PyTorch finds no GPU here: use trainer=cpu, or trainer=ddp_sim to run "
            "the distributed code paths on CPU processes",
        )
    strategy = trainer_cfg.get("strategy")
    name = strategy.get("_target_", "") if OmegaConf.is_dict(strategy) else str(strategy or "")
    spawned = OmegaConf.is_dict(strategy) and strategy.get("start_method") is not None  # LayerFSDP on CPUs
    if "fsdp" in name.lower() and accelerator not in ("gpu", "cuda", "auto") and not spawned:
        raise ConfigError.at(
            "trainer.accelerator",
            f"{accelerator}: Lightning's FSDP strategy (trainer=fsdp) runs on GPUs only; on a CPU, trainer=fsdp_sim "
            "runs the sharded code paths (FSDP over gloo) and trainer=ddp_sim DDP's",
        )
