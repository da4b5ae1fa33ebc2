"""Finding and composing the package's Hydra configs from Python."""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Sequence
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from tfgraph.registry import ConfigError, load_plugins


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

    Raises:
        tfgraph.ConfigError: for an option, key or override Hydra cannot compose (``model=nosuch`` names the
            group ``model`` and its options; ``model.nosuchkey=1`` names the key).
    """
    outer = get_gh_backup()  # a Hydra app's or test's own Hydra state, which composing must leave alone
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except MissingConfigException as err:
        raise missing_option(err) from err
    except (HydraException, OmegaConfBaseException) as err:
        raise composition_error(err) from err
    finally:
        restore_gh_from_backup(outer)
    load_plugins(cfg.get("plugins"), "plugins")
    return cfg


def composition_error(err: Exception) -> ConfigError:
    """Any other error Hydra or OmegaConf raise while composing, as a ConfigError at the key it is about."""
    key = str(getattr(err.__cause__, "full_key", None) or "")
    lines = str(err).split("\nSee https://")[0].strip().splitlines()
    if len(lines) == 2 and lines[0].startswith("Could not override") and "use +" in lines[1]:
        return ConfigError([(key, f"no such key to override (to add it: +{lines[1].split('use +', 1)[1]})")])
    return ConfigError([(key, "\n".join(lines))])


def missing_option(err: MissingConfigException) -> ConfigError:
    """Hydra's "Could not find 'model/norm/nosuch'" as a ConfigError at the group, listing its options."""
    missing = str(err.missing_cfg_file or "")
    group, _, name = missing.rpartition("/")
    options = [str(option) for option in err.options or []]
    if not group or not options:
        return ConfigError([("", str(err).split("\nConfig search path:")[0].strip())])
    close = difflib.get_close_matches(name, options, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError([(group, f"no option {name!r}: {hint}options are {', '.join(options)}")])
