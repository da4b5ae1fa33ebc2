"""The Lightning Trainer a config describes, and its metrics as floats (:func:`scalars`).

:func:`build_trainer` instantiates ``cfg.trainer`` with the callbacks of ``cfg.callbacks`` and the loggers of
``cfg.logger``, adds the callbacks every tfgraph run has (:mod:`tfgraph.tasks.callbacks`) and writes every
checkpoint atomically, and keeps Lightning's console to what concerns the run (:func:`quiet_lightning`); each mistake (a key the Trainer takes no argument for, a callback or logger whose package
is missing, a GPU that is not there) is a :class:`tfgraph.ConfigError` at its config key. :func:`check_memory`
refuses a model whose parameters cannot fit in the machine's memory, before they are allocated.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelSummary, ProgressBar
from pytorch_lightning.loggers import Logger
from pytorch_lightning.plugins.io import CheckpointIO

from tfgraph.registry import ConfigError, suggest
from tfgraph.run_checks import check_accelerator
from tfgraph.tasks.callbacks import (
    AtomicCheckpointIO,
    ContinueLogs,
    ProgressLog,
    StepProgressBar,
    StopOnDivergence,
    ValidateAtLastStep,
)
from tfgraph.tasks.callbacks import (
    scalars as scalars,  # tfgraph.trainer.scalars, as before
)
from tfgraph.tasks.optim import states_per_parameter
from tfgraph.tasks.summary import ModelSummary as TfgraphModelSummary

# Lines Lightning prints in every run that say nothing about it: its adverts ("💡 Tip: ... try installing
# litlogger"), and the note that a summary callback was given (build_trainer never has Lightning add its own).
LIGHTNING_NOISE = ("💡 Tip:", "Trainer already configured with model summary callbacks")
# Warnings about Lightning's own code, not the run's: (message regex, category, module regex of the warned line).
KNOWN_WARNINGS = (
    # torch 2.10+ deprecates LeafSpec, which Lightning's pytree helpers still build
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"pytorch_lightning\.utilities\._pytree"),
    # tasks prepare batches on the host (Task.on_before_batch_transfer); tfgraph's DataModules define no such hook
    (r"You have overridden `on_before_batch_transfer` in `LightningModule` but have passed in a", UserWarning, ""),
)


def build_trainer(cfg: DictConfig, **overrides: Any) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` with the callbacks of ``cfg.callbacks`` and loggers of ``cfg.logger``."""
    callbacks = [instantiate_part(node, f"callbacks.{name}", Callback) for name, node in _entries(cfg, "callbacks")]
    loggers = [instantiate_part(node, f"logger.{name}", Logger) for name, node in _entries(cfg, "logger")]
    if cfg.trainer.get("enable_progress_bar") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    elif not any(isinstance(c, ProgressBar) for c in callbacks):  # the run's steps, not Lightning's "Epoch 3/-2"
        callbacks.append(StepProgressBar())
    if cfg.trainer.get("enable_model_summary") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ModelSummary)]
    elif not any(isinstance(c, ModelSummary) for c in callbacks):  # tfgraph's FLOPs where Lightning counts 0
        callbacks.append(TfgraphModelSummary())
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    progress = [c for c in callbacks if isinstance(c, ProgressLog)] or [ProgressLog()]  # callbacks.progress_log's
    callbacks = [c for c in callbacks if not isinstance(c, ProgressLog)]
    # first: it sees each step's loss before a checkpoint of that step is taken
    callbacks = [StopOnDivergence(), *callbacks, ValidateAtLastStep(), *progress]
    callbacks += [ContinueLogs()] if loggers else []
    check_accelerator(cfg.trainer)
    quiet_lightning()
    overrides = {"enable_model_summary": False, **overrides}  # the summary is among the callbacks, or none is
    try:
        plugins = with_atomic_checkpoints(cfg.trainer.get("plugins"))
        return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins, **overrides)
    except InstantiationException as err:
        problems = unknown_arguments(cfg.trainer, "trainer") or [("trainer", str(err.__cause__ or err))]
        raise ConfigError(problems) from err


class DropLines(logging.Filter):
    """Drops the log records whose message starts with one of ``starts``."""

    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_lightning() -> None:
    """Keep Lightning's console to what concerns the run: drop the lines of :data:`LIGHTNING_NOISE` from its
    ``rank_zero`` logger and ignore the :data:`KNOWN_WARNINGS` (each by its message, category and the module it
    is raised in; every other warning still shows). Calling it again adds nothing."""
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, DropLines) for f in rank_zero.filters):
        rank_zero.addFilter(DropLines(LIGHTNING_NOISE))
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


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


def _entries(cfg: DictConfig, group: str) -> list[tuple[str, Any]]:
    return [(name, node) for name, node in (cfg.get(group) or {}).items() if node is not None]


def instantiate_part(node: Any, path: str, kind: type) -> Any:
    """Instantiate one callback or logger, with a ConfigError for a node that is not one or a missing package."""
    if not OmegaConf.is_dict(node) or "_target_" not in node:
        raise ConfigError.at(path, f"expected a {kind.__name__} config with a _target_, got {node!r}")
    try:
        part = instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ImportError):
            how = f"pip install {cause.name}" if cause.name else str(cause)
            raise ConfigError.at(path, f"needs a package that is not installed: {how}") from None
        raise ConfigError.at(path, str(cause or err)) from err
    if not isinstance(part, kind):
        raise ConfigError.at(path, f"{node._target_} is not a {kind.__name__}")
    return part


def check_memory(params: int, trainer: pl.Trainer, optimizer_cfg: Mapping[str, Any] | None, what: str) -> None:
    """Refuse, before any weight is allocated, a model whose parameters cannot fit in this machine's memory.

    Its float32 weights (the task builds them on the host) must fit in the memory available now, and, where the
    run trains on a CPU, so must what every step keeps: weights, gradients and the optimizer's states, in the
    trainer's precision. That is the least a run needs (one copy, no activations): a model over it would be
    killed, or leave the machine swapping, while its weights are allocated.

    Args:
        params: the model's parameters (counted on the ``meta`` device).
        trainer: the run's Trainer (its device and precision).
        optimizer_cfg: the optimizer config (how many states it keeps per parameter).
        what: how the parameters were counted, for the message (``with the data's 65 ids``).

    Raises:
        tfgraph.ConfigError: at ``model``, with the sizes and the memory available.
    """
    available = available_memory()
    if available is None:
        return
    weights = 4 * params
    states = states_per_parameter(optimizer_cfg)
    precision = str(trainer.precision)
    width = 2 if precision in ("16-true", "bf16-true") else 8 if precision == "64-true" else 4
    training = params * width * (2 + states)
    on_cpu = trainer.strategy.root_device.type == "cpu"
    needed = max(weights, training) if on_cpu else weights
    if needed <= available:
        return
    name = (optimizer_cfg or {}).get("name", "adamw")
    train = f", {_gib(training)} to train on the CPU with {name} ({precision}: weights, gradients and {states} states)"
    raise ConfigError.at(
        "model",
        f"{params:,} parameters ({what}) need {_gib(weights)} for their float32 weights"
        f"{train if on_cpu else ''}, but this machine has {_gib(available)} of memory available: make the model "
        "smaller (model.d_model, model.n_layers, model.d_ff, model.vocab_size)",
    )


def available_memory() -> int | None:
    """The bytes of memory this process may still allocate: the system's available memory (``MemAvailable``), or
    less where a cgroup limits the process (a container's); None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        try:
            with open(limit) as cap, open(usage) as used:
                found.append(int(cap.read().strip()) - int(used.read().strip()))
        except (OSError, ValueError):  # not there, or "max": no limit
            continue
    return min(found) if found else None


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def format_metrics(metrics: Mapping[str, float], prefix: str = "") -> str:
    """``test/loss=1.23, test/ppl=3.42``: the metrics starting with ``prefix``, sorted."""
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k.startswith(prefix))
