"""Sweeps (``tfgraph-train -m``): the Hydra callback that checks every swept value composes before any job is
launched, the job function that keeps a sweep going past a failed job, the Hydra callback that records each job
and writes the sweep's summary, and the resolvers the launcher presets use.

The callbacks are registered in ``conf/train.yaml`` under ``hydra.callbacks`` (``sweep_check``, ``sweep_summary``);
see :mod:`tfgraph.sweeps` for the files a job leaves and what the summary lists.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import RangeSweep
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tfgraph.cli import exit_on_error
from tfgraph.config import hydra_error
from tfgraph.data import DataError
from tfgraph.registry import ConfigError
from tfgraph.sweeps import (
    JOB_FILE,
    METRICS_FILE,
    RUN_INFO_FILE,
    JobResult,
    check_sweep_checkpoints,
    declared_sweeps,
    error_line,
    prune_checkpoints,
    read_jobs,
    write_json,
    write_summary,
)

log = logging.getLogger(__name__)

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")  # as Lightning reads them
GPU_ACCELERATORS = ("gpu", "cuda")  # not auto: a job asks SLURM for GPUs only on a GPU trainer


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"  # Hydra's own: its params are overrides


class SweepCheck(Callback):
    """Hydra callback: before a multirun launches anything, compose the config of each value of each swept
    override once (:func:`check_sweep`); when one does not compose, ``error: ...`` listing every such value, and
    exit code 2 with no job run (one misspelt value must not stop a sweep halfway, or after the others ran)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra logs and ignores an exception a callback raises, but not an exit
        exit_on_error(check_sweep, config)


def check_sweep(config: DictConfig) -> None:
    """Compose, as the launcher will, the job config of each value of each override a multirun sweeps (on the
    command line and, with Hydra's basic sweeper, in ``hydra.sweeper.params``): the first values of all sweeps,
    then each other value of one sweep with the first values of the others, not every combination.

    Args:
        config: the multirun's config, as Hydra hands it to ``on_multirun_start`` (with Hydra initialised).

    Raises:
        tfgraph.ConfigError: every value that does not compose, at its key, with the jobs it is in; a
            ``sweep_checkpoints`` that is not one of best, last, all, none.
    """
    check_sweep_checkpoints(config.get("sweep_checkpoints", "best"))
    loader = GlobalHydra.instance().config_loader()
    found: dict[tuple[str, str], str] = {}  # each problem, with the first probe it came up in
    for label, overrides in _probes(config, loader):
        try:
            loader.load_sweep_config(config, overrides)
        except (HydraException, OmegaConfBaseException) as err:
            for problem in hydra_error(err).problems:
                found.setdefault(problem, label)
    if found:
        raise ConfigError(
            [(key, f"{message} (in the sweep's jobs with {label})") for (key, message), label in found.items()]
        )


def _probes(config: DictConfig, loader: Any) -> list[tuple[str, list[str]]]:
    """The job overrides :func:`check_sweep` composes, each with the swept values it tries (none for one job).

    A range is tried by its first value (the others are numbers like it). A sweep that a sweeper samples itself
    (Optuna's ``interval(...)``), and the search space of any sweeper but the basic one, are left to the sweeper.
    """
    task = [str(override) for override in OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]
    params = []
    if OmegaConf.select(config, "hydra.sweeper._target_", default=None) == BASIC_SWEEPER:
        given = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
        params = [f"{key}={value}" for key, value in given.items()]
    choices: dict[str, list[str]] = {}  # each key's job overrides, the last given winning (as the sweeper does)
    swept: list[str] = []
    for override in OverridesParser.create(config_loader=loader).parse_overrides([*params, *task]):
        key = override.get_key_element()
        choices.pop(key, None)
        if key in swept:
            swept.remove(key)
        if not override.is_sweep_override():
            choices[key] = [override.input_line]
        elif override.is_discrete_sweep():  # a,b  choice(a,b)  range(0,4)  glob(*)
            values = override.sweep_string_iterator()
            if isinstance(override.value(), RangeSweep):
                values = itertools.islice(values, 1)
            choices[key] = [f"{key}={value}" for value in values]
            swept.append(key)
    swept = [key for key in swept if choices.get(key)]
    if not swept:
        return []  # one job: the sweeper composes it before launching it
    first = {key: values[0] for key, values in choices.items() if values}
    probes = [(" ".join(first[key] for key in swept), list(first.values()))]
    for key in swept:
        for value in choices[key][1:]:
            probes.append((value, [value if other == key else given for other, given in first.items()]))
    return probes


class FailedJob:
    """What a failed sweep job returns instead of its objective: the error, and the worst objective there is.

    Hydra's launchers and its basic sweeper pass it on and the sweep goes on. A sweeper that reads the objective
    as a number (``float(return_value)``, as the Optuna sweeper does) gets ``worst`` (+inf when minimising,
    -inf when maximising), so Optuna's TPE learns to stay away from configs that fail (invalid, over the
    parameter budget, diverging). A trial Optuna marks failed teaches its sampler nothing, and TPE proposed
    such a config again and again; hydra-optuna-sweeper 1.3 with Optuna 2.10 also stops the whole study on a
    NaN objective, and on a job that raised unless ``max_failure_rate`` allows it.

    Args:
        error: one line that says why (``ConfigError: model.n_heads: ...``).
        worst: the objective a number-reading sweeper sees.
    """

    def __init__(self, error: str, *, worst: float = math.inf) -> None:
        self.error = error
        self.worst = worst

    def __float__(self) -> float:
        return self.worst

    def __repr__(self) -> str:
        return f"FailedJob({self.error!r})"


def sweep_job(function: Callable[[DictConfig], dict[str, float]], cfg: DictConfig) -> float | FailedJob | None:
    """Run one job of a sweep: ``function(cfg)``'s ``cfg.optimized_metric`` (None when there is none to
    optimise), or a :class:`FailedJob` when it raises (the traceback goes to the job's log) or does not report
    that metric as a number."""
    from tfgraph.tasks.callbacks import TrainingDiverged

    worst = -math.inf if objective_mode(cfg) == "max" else math.inf
    try:
        metrics = function(cfg)
    except (ConfigError, DataError, TrainingDiverged) as err:  # the config's or the data's fault: no traceback
        log.error("job failed: %s", err)
        return FailedJob(error_line(err), worst=worst)
    except Exception as err:
        log.error("job failed: %s", error_line(err), exc_info=True)
        return FailedJob(error_line(err), worst=worst)
    name = cfg.get("optimized_metric")
    if name is None:
        return None
    value = metrics.get(name)
    if value is None or not math.isfinite(value):
        found = ", ".join(sorted(metrics)) or "none"
        error = f"optimized_metric: {name} is {value} (the run's metrics: {found})"
        log.error("job failed: %s", error)
        return FailedJob(error, worst=worst)
    return value


def objective_mode(cfg: DictConfig) -> str:
    """``max`` or ``min``: the direction of the sweeper (Optuna's ``hydra.sweeper.direction``) where it has
    one, else ``optimized_mode``. A failed job reports the worst value for the sweeper's own direction."""
    direction = None
    if HydraConfig.initialized():
        direction = OmegaConf.select(HydraConfig.get(), "sweeper.direction", default=None)
    if isinstance(direction, str):
        return "max" if direction.startswith("max") else "min"
    return "max" if cfg.get("optimized_mode") == "max" else "min"


def optuna_direction(mode: Any) -> str:
    """``optimized_mode`` as the Optuna sweeper's ``direction``: ``min`` -> ``minimize``, ``max`` -> ``maximize``."""
    if mode not in ("min", "max"):
        raise ValueError(f"optimized_mode: expected min or max, got {mode!r}")
    return f"{mode}imize"


def is_rank_zero() -> bool:
    """Whether this process is its job's first: DDP processes Lightning starts and SLURM's other tasks are not."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


class SweepSummary(Callback):
    """Hydra callback: each job of a multirun leaves ``job.json`` in its dir; ``summary.csv`` and ``summary.md``
    in the sweep dir list every job (see :mod:`tfgraph.sweeps`).

    ``on_job_start`` and ``on_job_end`` run where the job runs (in this process, a joblib worker, a SLURM
    node), so everything passes through files. The summary is written at the end of the multirun and, when the
    jobs run in the launching process (Hydra's default launcher), after every job too: a long sweep can be
    watched, and a sweep that stops early (an Optuna study none of whose trials succeeded) still has it.
    """

    running: ClassVar[tuple[SweepSummary, DictConfig] | None] = None  # the sweep this process launched, till its end

    def __init__(self) -> None:
        self.started: float | None = None
        self.launcher_pid: int | None = None  # the process that launched the sweep
        self.declared: list[str] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.launcher_pid = os.getpid()
        self.declared = declared_sweeps(config)
        SweepSummary.running = (self, config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()
        if config.hydra.mode == RunMode.MULTIRUN and is_rank_zero():
            # A sweep dir used again: what an earlier job left here must not pass for this job's results.
            Path(config.hydra.runtime.output_dir, JOB_FILE).unlink(missing_ok=True)
            for name in (RUN_INFO_FILE, METRICS_FILE):
                Path(run_dir(config), name).unlink(missing_ok=True)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or not is_rank_zero():
            return
        value = job_return._return_value  # the property raises for a failed job; the value is its exception
        if isinstance(value, FailedJob):
            status, error, objective = "failed", value.error, None
        elif isinstance(value, BaseException):
            status, error, objective = "failed", error_line(value), None
        else:
            status, error, objective = "ok", "", value if isinstance(value, (int, float)) else None
        record = {
            "num": config.hydra.job.num,
            "status": status,
            "error": error,
            "objective": objective,
            "optimized_metric": config.get("optimized_metric"),
            "wall_s": None if self.started is None else time.time() - self.started,
            "overrides": list(job_return.overrides or []),
        }
        if run_dir(config) != Path(config.hydra.runtime.output_dir):
            record["output_dir"] = str(run_dir(config))  # paths.output_dir: where run_info and metrics are
        write_json(Path(config.hydra.runtime.output_dir, JOB_FILE), record)
        keep = config.get("sweep_checkpoints", "best")
        removed = prune_checkpoints(run_dir(config), keep)
        if removed:
            log.info("sweep_checkpoints=%s: removed %d checkpoints of job %s", keep, len(removed), record["num"])
        if os.getpid() == self.launcher_pid:
            self.summarize(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        SweepSummary.running = None
        jobs = self.summarize(config)
        failed = [job for job in jobs if job.status != "ok"]
        log.info(
            "sweep summary: %s (%d jobs, %d failed)", Path(config.hydra.sweep.dir, "summary.md"), len(jobs), len(failed)
        )
        for job in failed:
            log.warning("job %d failed: %s", job.num, job.error)
        if jobs and len(failed) == len(jobs):
            log.warning(
                "every job failed: no result to compare%s",
                " (a sweeper's best trial, e.g. optimization_results.yaml, is one of these failures)"
                if OmegaConf.select(config, "hydra.sweeper.direction", default=None)
                else "",
            )

    def summarize(self, config: DictConfig) -> list[JobResult]:
        """Write the summary of the sweep ``config`` describes (a job's config or the sweep's) from its files."""
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return []
        _, _, jobs = write_summary(
            sweep_dir,
            declared=self.declared,
            objective=config.get("optimized_metric"),
            mode=config.get("optimized_mode", "min"),
            checkpoints=config.get("sweep_checkpoints", "best"),
        )
        return jobs


def run_dir(config: DictConfig) -> Path:
    """Where a sweep job's run writes (``paths.output_dir``), which is its Hydra job dir unless set otherwise."""
    given = OmegaConf.select(config, "paths.output_dir", default=None, throw_on_resolution_failure=False)
    return Path(given or config.hydra.runtime.output_dir)


def summarize_stopped_sweep() -> None:
    """Write the summary of a sweep that stopped before its end: a launcher that gave up on a job killed outright
    (the submitit launcher raises for it), Ctrl-C. Jobs still running elsewhere are listed as not finished;
    ``python -m tfgraph.sweeps <sweep dir>`` writes it again once they are."""
    if SweepSummary.running is None:
        return
    callback, config = SweepSummary.running
    SweepSummary.running = None
    sweep_dir = Path(config.hydra.sweep.dir)
    if not sweep_dir.is_dir() or not read_jobs(sweep_dir):
        return  # stopped before its first job (a value the sweeper could not compose): nothing to sum up
    try:
        jobs = callback.summarize(config)
    except Exception as err:  # the error that stopped the sweep is the one to report
        log.warning("could not write the sweep's summary: %s", error_line(err))
        return
    failed = sum(job.status != "ok" for job in jobs)
    print(
        f"the sweep stopped before its end; summary of its {len(jobs)} jobs so far ({failed} failed or not "
        f"finished): {Path(config.hydra.sweep.dir, 'summary.md')}",
        file=sys.stderr,
    )


# ------------------------------------------------------------------------------------- launcher resolvers


def slurm_tasks(devices: Any) -> int:
    """``trainer.devices`` as SLURM's tasks (or GPUs) per node: one process per device, so a whole number."""
    if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        return devices
    raise ValueError(
        f"trainer.devices={devices!r} cannot size a SLURM job: one task runs per device, so give their number "
        "(e.g. trainer.devices=4) with launcher=submitit_slurm"
    )


def slurm_gpus(accelerator: Any, devices: Any) -> int:
    """GPUs per node for a SLURM job: ``trainer.devices`` on a GPU accelerator (``gpu``, ``cuda``), else 0
    (``auto`` too: the default trainer asks for none; ``trainer=gpu``, ``ddp`` or ``fsdp`` ask for GPUs)."""
    return slurm_tasks(devices) if str(accelerator) in GPU_ACCELERATORS else 0


def register_resolvers() -> None:
    """``${tfgraph.slurm_tasks:${trainer.devices}}`` and ``${tfgraph.slurm_gpus:...}`` for conf/launcher/,
    ``${tfgraph.optuna_direction:${optimized_mode}}`` for conf/hparams_search/optuna.yaml."""
    OmegaConf.register_new_resolver("tfgraph.slurm_tasks", slurm_tasks, replace=True)
    OmegaConf.register_new_resolver("tfgraph.slurm_gpus", slurm_gpus, replace=True)
    OmegaConf.register_new_resolver("tfgraph.optuna_direction", optuna_direction, replace=True)


__all__ = [
    "FailedJob",
    "SweepCheck",
    "SweepSummary",
    "check_sweep",
    "declared_sweeps",
    "objective_mode",
    "register_resolvers",
    "summarize_stopped_sweep",
    "sweep_job",
]
