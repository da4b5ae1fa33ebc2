"""``tfgraph-train``: train a model for a task (see ``conf/train.yaml``); a thin wrapper over :func:`tfgraph.train.train`.

    tfgraph-train                                      # a small GPT on Shakespeare, with a sample at the end
    tfgraph-train experiment=reverse
    tfgraph-train task=seq2seq model=transformer_tiny data=pairs data.path=pairs.tsv
    tfgraph-train model=gpt2_tiny debug=fast_dev_run
    tfgraph-train -m optimizer.lr=1e-3,3e-4           # a sweep; each job returns cfg.optimized_metric
    tfgraph-train -m hparams_search=optuna             # an Optuna search (conf/hparams_search/optuna.yaml)

Exit codes: 0 on success, 1 when Hydra cannot compose the config (an unknown option, say), 2 for a
:class:`tfgraph.ConfigError` or a :class:`tfgraph.data.DataError` (printed as ``error: ...``, no traceback),
3 when the training loss diverges (:class:`tfgraph.train.TrainingDiverged`). In a sweep (``-m``) a job that
fails is logged and marked failed, and the sweep goes on (:mod:`tfgraph.cli.sweep`): ``summary.md`` and
``summary.csv`` in the sweep dir list every job.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from tfgraph.cli.sweep import register_resolvers, sweep_job
from tfgraph.config import conf_dir
from tfgraph.data import DataError
from tfgraph.registry import ConfigError


def run_job(function: Callable[[DictConfig], dict[str, float]], cfg: DictConfig) -> dict[str, float]:
    """Call ``function(cfg)`` with ``paths.output_dir`` set to Hydra's run dir; a ConfigError or DataError
    becomes ``error: ...`` on stderr and exit code 2, a diverged training exit code 3."""
    from tfgraph.train import TrainingDiverged

    set_output_dir(cfg)
    try:
        return function(cfg)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(3)


def set_output_dir(cfg: DictConfig) -> None:
    """``paths.output_dir``: Hydra's run dir (a sweep job's own dir), unless the config sets one."""
    with open_dict(cfg):
        if not OmegaConf.select(cfg, "paths.output_dir"):
            OmegaConf.update(cfg, "paths.output_dir", HydraConfig.get().runtime.output_dir, force_add=True)


def main() -> None:
    """The console script: compose the ``train`` config from the command line and train."""
    register_resolvers()

    @hydra.main(config_path=str(conf_dir()), config_name="train", version_base="1.3")
    def run(cfg: DictConfig) -> Any:
        from tfgraph.train import train

        if HydraConfig.get().mode == RunMode.MULTIRUN:
            set_output_dir(cfg)
            return sweep_job(train, cfg)  # the objective, or a FailedJob: the sweep goes on
        metrics = run_job(train, cfg)
        return metrics.get(cfg.get("optimized_metric"))

    run()


if __name__ == "__main__":
    main()
