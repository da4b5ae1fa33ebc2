"""``tfgraph-train``: train a model for a task (see ``conf/train.yaml``); a thin wrapper over :func:`tfgraph.train.train`.

    tfgraph-train                                      # a small GPT on Shakespeare, with a sample at the end
    tfgraph-train experiment=reverse
    tfgraph-train task=seq2seq model=transformer_tiny data=pairs data.path=pairs.tsv
    tfgraph-train model=gpt2_tiny debug=fast_dev_run
    tfgraph-train -m optimizer.lr=1e-3,3e-4           # a sweep; each job returns cfg.optimized_metric

Exit codes: 0 on success, 1 when Hydra cannot compose the config (an unknown option, say), 2 for a
:class:`tfgraph.ConfigError` or a :class:`tfgraph.data.DataError` (printed as ``error: ...``, no traceback).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from tfgraph.config import conf_dir
from tfgraph.data import DataError
from tfgraph.registry import ConfigError


def run_job(function: Callable[[DictConfig], dict[str, float]], cfg: DictConfig) -> dict[str, float]:
    """Call ``function(cfg)`` with ``paths.output_dir`` set to Hydra's run dir; a ConfigError or DataError
    becomes ``error: ...`` on stderr and exit code 2."""
    with open_dict(cfg):
        if not OmegaConf.select(cfg, "paths.output_dir"):
            OmegaConf.update(cfg, "paths.output_dir", HydraConfig.get().runtime.output_dir, force_add=True)
    try:
        return function(cfg)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """The console script: compose the ``train`` config from the command line and train."""

    @hydra.main(config_path=str(conf_dir()), config_name="train", version_base="1.3")
    def run(cfg: DictConfig) -> Any:
        from tfgraph.train import train

        metrics = run_job(train, cfg)
        return metrics.get(cfg.get("optimized_metric"))  # what a sweeper (Optuna, ...) optimises

    run()


if __name__ == "__main__":
    main()
