"""Finding and composing the package's Hydra configs from Python."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

from tfgraph.registry import load_plugins


def conf_dir() -> Path:
    """The folder of the package's Hydra configs: ``tfgraph.conf`` once installed, ``conf/`` in a checkout."""
    spec = importlib.util.find_spec("tfgraph.conf")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if (Path(location) / "train.yaml").is_file():
                return Path(location)
    return Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose one of the package's configs with Hydra override syntax, from any working directory.

    Args:
        overrides: e.g. ``["model=llama_tiny", "model/norm=layernorm", "model.n_layers=3"]``.
        config_name: the top-level config (``train``, ``show``, ...).

    Returns:
        The composed config. Plugin modules it lists under ``plugins`` are imported, so their blocks can be
        named in the model config.
    """
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    load_plugins(cfg.get("plugins"), "plugins")
    return cfg
