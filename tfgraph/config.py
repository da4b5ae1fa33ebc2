"""The package's Hydra configs: finding and composing them from Python, Hydra's composition errors as a
:class:`tfgraph.ConfigError` at their key, a composed node as plain containers (:func:`plain`) and the output
dir of a run (:func:`prepare_output_dir`)."""

from __future__ import annotations

import copy
import datetime
import difflib
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig, OmegaConf, open_dict
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
    except (HydraException, OmegaConfBaseException) as err:
        raise hydra_error(err) from err
    finally:
        restore_gh_from_backup(outer)
    load_plugins(cfg.get("plugins"), "plugins")
    return cfg


def plain(node: Any) -> Any:
    """A config node as resolved plain containers, without Hydra's own node (None stays None)."""
    if node is None or not OmegaConf.is_config(node):
        return copy.deepcopy(node)
    container = OmegaConf.to_container(node, resolve=True)
    if isinstance(container, dict):
        container.pop("hydra", None)
    return container


def prepare_output_dir(cfg: DictConfig) -> Path:
    """The run's output dir (``cfg.paths.output_dir``; ``outputs/<date>/<time>`` when unset, then set), created."""
    output_dir = OmegaConf.select(cfg, "paths.output_dir")
    if not output_dir:
        output_dir = str(Path("outputs", datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")).absolute())
        with open_dict(cfg):
            OmegaConf.update(cfg, "paths.output_dir", output_dir, force_add=True)
    path = Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def hydra_error(err: Exception) -> ConfigError:
    """An error Hydra or OmegaConf raise while composing a config (from Python or a command line), as the
    ConfigError that says what is wrong where: :func:`missing_option` for an option a group does not have,
    :func:`composition_error` for anything else (an unknown key, an override Hydra cannot parse)."""
    if isinstance(err, MissingConfigException):
        return missing_option(err)
    return composition_error(err)


OVERRIDE_GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic"
OVERRIDE_KEY = re.compile(r"[+~]*([\w./@:\[\]-]+)=")  # the key of an override line: ``+trainer.max_step=100``


def composition_error(err: Exception) -> ConfigError:
    """Any other error Hydra or OmegaConf raise while composing, as a ConfigError at the key it is about.

    An unknown key names the closest existing one (``trainer.max_step`` -> ``trainer.max_steps``) before saying
    how to add a new key; an override Hydra cannot parse names its key and shows the override.
    """
    if isinstance(err, OverrideParseException):
        line = str(err.override)
        key = OVERRIDE_KEY.match(line)
        reason = str(err.message).split("\nSee https://")[0].strip()
        return ConfigError.at(
            key[1] if key else "", f"cannot parse {line!r}: {reason} (override syntax: {OVERRIDE_GRAMMAR})"
        )
    cause = err.__cause__
    lines = str(err).split("\nSee https://")[0].strip().splitlines()
    unknown = re.fullmatch(r"Could not override '(.+)'\.", lines[0]) if lines else None
    if unknown and len(lines) == 2 and "use +" in lines[1]:
        key = unknown[1]
        hint = _close_key(key, cause)
        return ConfigError.at(key, f"no such key to override{hint} (to add it: +{lines[1].split('use +', 1)[1]})")
    deleted = re.fullmatch(r"Could not delete from config\. '(.+)' does not exist\.", lines[0]) if lines else None
    if deleted and len(lines) == 1:
        return ConfigError.at(deleted[1], "no such key to delete")
    message = "\n".join(lines)
    if isinstance(cause, OmegaConfBaseException) and str(getattr(cause, "msg", None) or "").strip():
        message += f": {str(cause.msg).strip().splitlines()[0]}"  # what is wrong with the value: "not a valid bool"
    return ConfigError.at(str(getattr(cause, "full_key", None) or ""), message)


def _close_key(key: str, cause: BaseException | None) -> str:
    """``: did you mean trainer.max_steps?`` for an override of ``trainer.max_step``, from the node OmegaConf
    found no ``max_step`` in (empty when no key there is close)."""
    parent = getattr(cause, "parent_node", None)
    missing = str(getattr(cause, "key", None) or "")
    full = str(getattr(cause, "full_key", None) or "")
    if not isinstance(parent, DictConfig) or not missing or not full.endswith(missing) or not key.startswith(full):
        return ""
    close = difflib.get_close_matches(missing, [str(k) for k in parent.keys()], n=1)
    if not close:
        return ""
    return f": did you mean {full[: len(full) - len(missing)]}{close[0]}{key[len(full) :]}?"


def missing_option(err: MissingConfigException) -> ConfigError:
    """Hydra's "Could not find 'model/norm/nosuch'" as a ConfigError at the group, listing its options."""
    missing = str(err.missing_cfg_file or "")
    group, _, name = missing.rpartition("/")
    options = [str(option) for option in err.options or []]
    if not group or not options:
        return ConfigError.at("", str(err).split("\nConfig search path:")[0].strip())
    close = difflib.get_close_matches(name, options, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError.at(group, f"no option {name!r}: {hint}options are {', '.join(options)}")
