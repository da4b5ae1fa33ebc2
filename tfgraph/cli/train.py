"""``tfgraph-train``: train a model for a task (see ``conf/train.yaml``); a thin wrapper over :func:`tfgraph.train.train`.

    tfgraph-train                                      # a small GPT on Shakespeare, with a sample at the end
    tfgraph-train experiment=reverse
    tfgraph-train task=seq2seq model=transformer_tiny data=pairs data.path=pairs.tsv
    tfgraph-train model=gpt2_tiny debug=fast_dev_run
    tfgraph-train -m optimizer.lr=1e-3,3e-4           # a sweep; each job returns cfg.optimized_metric
    tfgraph-train -m hparams_search=optuna             # an Optuna search (conf/hparams_search/optuna.yaml)

Exit codes: 0 on success, 2 for a :class:`tfgraph.ConfigError` or a :class:`tfgraph.data.DataError`, an option,
key or override Hydra cannot compose included (printed as ``error: ...``, no traceback), 3 when the training
loss diverges (:class:`tfgraph.train.TrainingDiverged`), the same when a spawned process raised them
(:func:`tfgraph.cli.exit_on_error`, which every command runs its job under). A sweep (``-m``) first composes each value of each swept
override and exits 2, launching nothing, when one does not compose (:class:`tfgraph.cli.sweep.SweepCheck`);
then a job that fails is logged and marked failed, and the sweep goes on (:mod:`tfgraph.cli.sweep`):
``summary.md`` and ``summary.csv`` in the sweep dir list every job.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from tfgraph.cli import command, exit_on_error
from tfgraph.cli import spawned_error as spawned_error  # where it was before every command shared it
from tfgraph.cli.sweep import register_resolvers, summarize_stopped_sweep, sweep_job
from tfgraph.registry import ConfigError


def run_job(function: Callable[[DictConfig], dict[str, float]], cfg: DictConfig) -> dict[str, float]:
    """``function(cfg)`` with ``paths.output_dir`` set to Hydra's run dir, under :func:`tfgraph.cli.exit_on_error`
    (also when called outside a command): a ConfigError or DataError becomes ``error: ...`` on stderr and exit
    code 2, a diverged training exit code 3, in this process or a spawned one."""
    set_output_dir(cfg)
    return exit_on_error(function, cfg)


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # not even the hydra_plugins namespace
        return False


def sweep_output_dir(cfg: DictConfig) -> DictConfig:
    """A sweep job's ``cfg`` with ``paths.output_dir`` set to its own dir; a ConfigError for a ``paths.output_dir``
    given without any interpolation, which every job of the sweep would share (and overwrite)."""
    given = OmegaConf.to_container(cfg.paths, resolve=False).get("output_dir") if "paths" in cfg else None
    if isinstance(given, str) and given and "${" not in given:
        raise ConfigError.at(
            "paths.output_dir",
            f"{given} would be the dir of every job of the sweep: leave it unset (each job writes to its "
            "own dir under hydra.sweep.dir) or make it differ per job, e.g. 'paths.output_dir=/scratch/"
            "run_${hydra:job.num}'",
        )
    set_output_dir(cfg)
    return cfg


PLUGINS = {  # the config group options that need a Hydra plugin of the sweeps extra, and its module
    "launcher=joblib": "hydra_plugins.hydra_joblib_launcher",
    "launcher=submitit_local": "hydra_plugins.hydra_submitit_launcher",
    "launcher=submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
    "hparams_search=optuna": "hydra_plugins.hydra_optuna_sweeper",
}


def check_plugins(args: list[str]) -> None:
    """Exit with a message naming the extra to install when the command line picks a launcher or sweeper whose
    Hydra plugin is missing (Hydra itself only says it cannot find ``hydra/launcher/joblib``)."""
    for arg in args:
        module = PLUGINS.get(arg.lstrip("+"))
        if module and not installed(module):
            print(
                f"error: {arg} needs the Hydra plugin {module.rsplit('.', 1)[-1]}: "
                'install the sweeps extra (pip install -e ".[sweeps]")',
                file=sys.stderr,
            )
            sys.exit(2)


def set_output_dir(cfg: DictConfig) -> None:
    """``paths.output_dir``: Hydra's run dir (a sweep job's own dir), unless the config sets one."""
    with open_dict(cfg):
        if not OmegaConf.select(cfg, "paths.output_dir"):
            OmegaConf.update(cfg, "paths.output_dir", HydraConfig.get().runtime.output_dir, force_add=True)


def main() -> None:
    """The console script: compose the ``train`` config from the command line and train."""
    register_resolvers()
    check_plugins(sys.argv[1:])

    @command("train")
    def run(cfg: DictConfig) -> Any:
        from tfgraph.train import train

        # what a resumed run checks against its checkpoint, as typed (an override's ${...} is the config's to resolve)
        overrides = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # the objective, or a FailedJob
            return sweep_job(lambda cfg: train(sweep_output_dir(cfg), overrides=overrides), cfg)
        metrics = run_job(lambda cfg: train(cfg, overrides=overrides), cfg)
        return metrics.get(cfg.get("optimized_metric"))

    try:
        run()
    except BaseException as stop:  # the launcher gave up, Ctrl-C: keep what the sweep's jobs did
        if not (isinstance(stop, SystemExit) and stop.code in (0, None)):
            summarize_stopped_sweep()
        raise


if __name__ == "__main__":
    main()
