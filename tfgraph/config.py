"""The package's Hydra configs: finding and composing them from Python, Hydra's composition errors as a
:class:`tfgraph.ConfigError` at their key (a group given a value that names no option included), interpolations
that do not resolve as one too (:func:`check_resolvable`), a composed node as plain containers (:func:`plain`)
and the output dir of a run (:func:`prepare_output_dir`)."""

from __future__ import annotations

import copy
import datetime
import difflib
import importlib.util
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from tfgraph.registry import ConfigError, Problems, load_plugins


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
    except ValueError as err:  # Hydra's own, for a group given a number: data=5
        raise (group_value_error(err, overrides) or err) from err
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
    """The run's output dir (``cfg.paths.output_dir``; ``outputs/<date>/<time>`` when unset, then set), created.

    Raises:
        tfgraph.ConfigError: at ``paths.output_dir`` for a dir that cannot be created or written in.
    """
    output_dir = OmegaConf.select(cfg, "paths.output_dir")
    if not output_dir:
        output_dir = str(Path("outputs", datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")).absolute())
        with open_dict(cfg):
            OmegaConf.update(cfg, "paths.output_dir", output_dir, force_add=True)
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()  # can a file be written there (a read-only mount, for root too)
    except OSError as err:
        raise output_dir_error(err, "paths.output_dir") from None
    return path


def output_dir_error(err: OSError, key: str) -> ConfigError:
    """An OSError met creating or writing a run's output dir, as a ConfigError at ``key`` (``paths.output_dir``,
    ``hydra.run.dir``, ``hydra.sweep.dir``): the path, why, and what is expected."""
    where = f"{err.filename}: " if err.filename else ""
    return ConfigError.at(
        key,
        f"cannot create or write the run's output dir ({where}{err.strerror or err}): give a dir that can be "
        "created and written in",
    )


def check_resolvable(cfg: DictConfig) -> None:
    """Resolve every interpolation of ``cfg`` (Hydra's own node left out) once, so that one that cannot be resolved
    (``${oc.env:UNSET}``, a key that is not there) is a ConfigError at its key before anything runs, all of them
    together, and not a traceback at the moment the value is read."""
    problems = Problems()

    def walk(node: Any, path: str) -> None:
        keys = range(len(node)) if OmegaConf.is_list(node) else [k for k in node.keys() if path or k != "hydra"]
        for key in keys:
            if OmegaConf.is_missing(node, key):
                continue  # ``???``: whoever reads it says it is missing
            try:
                value = node[key]
            except InterpolationResolutionError as err:
                problems.add(*interpolation_problem(err))
                continue
            if OmegaConf.is_config(value):
                walk(value, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key))

    walk(cfg, "")
    problems.raise_if_any()


def interpolation_error(err: InterpolationResolutionError) -> ConfigError:
    """An interpolation OmegaConf could not resolve (``${oc.env:UNSET}``) as a ConfigError at its key."""
    return ConfigError([interpolation_problem(err)])


def interpolation_problem(err: InterpolationResolutionError) -> tuple[str, str]:
    """``(key, "cannot resolve '${oc.env:X}': Environment variable 'X' not found")``."""
    reason = str(err.msg or err).strip().splitlines()[0]
    raised = re.fullmatch(r"\w+ raised while resolving interpolation: (.*)", reason)
    reason = raised[1].strip("\"'") if raised else reason
    node = getattr(err, "child_node", None)
    given = node._value() if node is not None else None
    what = f"cannot resolve {given!r}" if isinstance(given, str) else "cannot resolve its interpolation"
    return str(err.full_key or ""), f"{what}: {reason}"


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


def group_value_error(err: ValueError, overrides: Sequence[str]) -> ConfigError | None:
    """Hydra's ValueError for a config group given a value that is no option's name (``data=5``, ``model=null``)
    as a ConfigError at the group, listing its options; None for any other ValueError."""
    if not str(err).startswith("Config group override"):
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for line in overrides:
        if line.startswith("-") or "=" not in line:
            continue  # a flag (-m, --cfg job, -cd <dir>)
        try:
            override = parser.parse_override(line)
        except Exception:  # Hydra reports an override it cannot parse itself
            continue
        group, value = str(override.key_or_group), override.value()
        if isinstance(value, (str, list, dict)) or not (conf_dir() / group).is_dir():
            continue
        options = sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
        listed = f"; options are {', '.join(options)}" if options else ""
        leave_out = f" (to leave the group out: ~{group})" if value is None else ""
        given = "null" if value is None else repr(value)
        return ConfigError.at(
            group, f"{line!r} gives {given}, not an option's name: expected {group}=<option>{leave_out}{listed}"
        )
    return ConfigError.at("", str(err))


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
