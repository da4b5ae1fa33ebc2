"""Reading a checkpoint: a checkpoint is data, never code.

Every command that takes ``ckpt_path`` (``tfgraph-eval``, ``tfgraph-train`` to resume, ``tfgraph-generate``,
``tfgraph-attention``), ``tfgraph.generate(path, ...)`` and the weight import of ``init_from`` read a checkpoint
through :func:`load_checkpoint`, which

- reads the file with ``torch.load(weights_only=True)``: a pickle that would rebuild any other object (run any
  code) is refused, and so is anything that is not a readable torch file;
- checks that what it read is shaped like a tfgraph checkpoint (a known task, a format this tfgraph reads, plain
  hyperparameters, a state dict of tensors), so that a crafted-but-wrong file is a ConfigError too;
- refuses, before anything is imported or built, every way the file could make tfgraph run code: a ``_target_``
  anywhere but ``data._target_``, a ``data._target_`` that is not one of tfgraph's DataModules (:data:`DATA_MODULES`)
  or a DataModule class of a module the process has already imported (the user's ``plugins=[my_pkg.data]``), an
  OmegaConf interpolation (``${...}``) in any value, and a plugin module in ``model.plugins``.

The user opts in on the command line: ``trust_plugins=true`` lets the checkpoint import the modules it names
(``model.plugins``, the module of ``data._target_``); ``plugins=[my_pkg.blocks]`` imports those modules first and
lets the checkpoint name them. :func:`load_task` rebuilds the task through tfgraph's registries alone (the task
class by name, blocks, heads, optimizers by registered name); the DataModule of a checkpoint is called with its
plain options, never instantiated by Hydra (:func:`data_module_class`, :func:`tfgraph.run_data.checkpoint_datamodule`).
"""

from __future__ import annotations

import importlib
import pickle
import re
import sys
import warnings
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from tfgraph.data import (
    ConllDataModule,
    DataError,
    HFDataModule,
    LabeledDataModule,
    PairsDataModule,
    TextDataModule,
)
from tfgraph.registry import ConfigError, Problems
from tfgraph.tasks.base import CHECKPOINT_FORMAT, Task, check_plain

FORMAT = CHECKPOINT_FORMAT  # the format this tfgraph writes and reads up to: checkpoint["tfgraph"]["format"]
# the DataModules a checkpoint may name as data._target_: those conf/data/*.yaml name
DATA_MODULES: dict[str, type[pl.LightningDataModule]] = {
    f"tfgraph.data.{cls.__name__}": cls
    for cls in (TextDataModule, PairsDataModule, LabeledDataModule, ConllDataModule, HFDataModule)
}
KEY = "ckpt_path"  # the config key every checkpoint problem is reported under
INTERPOLATION = "${"
# hyperparameters taken as opaque text (the tokenizer's JSON), never read by OmegaConf
OPAQUE = ("tokenizer",)
TRAINING_STATE = ("optimizer_states", "lr_schedulers")  # what resuming needs besides the weights


def load_checkpoint(path: str | Path, *, trust_plugins: bool = False, plugins: Collection[str] = ()) -> dict[str, Any]:
    """Read and check a tfgraph checkpoint: ``torch.load(weights_only=True)`` on the CPU, then :func:`check_checkpoint`.

    Args:
        path: the checkpoint file (``<run dir>/checkpoints/last.ckpt``).
        trust_plugins: let the checkpoint import the modules it names (``model.plugins``, ``data._target_``'s).
        plugins: the plugin modules the user's command imports itself; the checkpoint may name those.

    Returns:
        The checkpoint as Lightning wrote it (``state_dict``, ``hyper_parameters``, ``tfgraph``, ...).

    Raises:
        tfgraph.ConfigError: under ``ckpt_path``, naming the path and what is wrong: no such file, not a readable
            torch file, a pickle ``weights_only`` refuses, not a tfgraph checkpoint, a newer format, a hyperparameter
            that would run code.
    """
    checkpoint = read_checkpoint(path)
    check_checkpoint(checkpoint, where=str(path), trust_plugins=trust_plugins, plugins=plugins)
    return checkpoint


def read_checkpoint(path: str | Path) -> Any:
    """The object a checkpoint file holds, read with ``torch.load(weights_only=True)``; a ConfigError naming the
    path for anything that is not a readable torch file (a pickle that would rebuild other objects is never run)."""
    file = Path(path)
    if file.is_dir():
        inside = file / "checkpoints" / "last.ckpt"
        hint = f" (its run's checkpoint is {inside})" if inside.is_file() else ""
        raise ConfigError.at(KEY, f"{path} is a directory, not a checkpoint file{hint}")
    if not file.is_file():
        raise ConfigError.at(KEY, f"no checkpoint at {path}")
    if file.stat().st_size == 0:
        raise ConfigError.at(KEY, f"{path} is an empty file, not a checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", str(err))
        why = f" ({found.group(1).strip()})" if found else ""
        raise ConfigError.at(
            KEY,
            f"{path} is not a checkpoint tfgraph reads: torch.load(weights_only=True) refuses it{why}; a "
            "checkpoint holds only tensors and plain containers, and nothing in the file was run",
        ) from None
    except Exception as err:  # torch raises what its readers raise: RuntimeError, EOFError, IndexError, ...
        first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else ""
        raise ConfigError.at(
            KEY,
            f"{path} is not a readable torch checkpoint (truncated, or another kind of file): "
            f"{type(err).__name__}{': ' + first[:200] if first else ''}",
        ) from None


def check_checkpoint(
    checkpoint: Any, *, where: str = "checkpoint", trust_plugins: bool = False, plugins: Collection[str] = ()
) -> None:
    """Check that ``checkpoint`` is a tfgraph checkpoint this tfgraph reads and that nothing in it runs code.

    Shape: a dict whose ``tfgraph`` entry names a known task and a format up to :data:`FORMAT` (none: format 1),
    whose ``hyper_parameters`` are the task's plain arguments (``model`` and ``tokenizer`` among them) and whose
    ``state_dict`` maps names to tensors. Safety: see the module's docstring. Every problem found is reported
    together, each as ``ckpt_path: <where>: <key path inside the checkpoint> ...``.

    Args:
        checkpoint: what :func:`read_checkpoint` returned (or a dict from elsewhere).
        where: the checkpoint's path, for the messages.
        trust_plugins: let the checkpoint import the modules it names.
        plugins: the plugin modules the user's command imports itself; the checkpoint may name those.

    Raises:
        tfgraph.ConfigError: one problem per line, all under ``ckpt_path``.
    """
    from tfgraph.tasks import TASKS  # tfgraph.tasks imports this module

    def refuse(message: str) -> ConfigError:
        return ConfigError.at(KEY, f"{where}: {message}")

    if not isinstance(checkpoint, dict):
        raise refuse(f"a {type(checkpoint).__name__}, not a tfgraph checkpoint")
    if "tfgraph" not in checkpoint:
        keys = ", ".join(repr(k) for k in list(checkpoint)[:6]) or "none"
        raise refuse(f"not a tfgraph checkpoint (no 'tfgraph' entry; its keys: {keys}): another program's file?")
    info = checkpoint["tfgraph"]
    if not isinstance(info, dict):
        raise refuse(f"tfgraph: expected {{task: ..., format: ...}}, got a {type(info).__name__}")
    version = info.get("format", 1)  # checkpoints from before the format was recorded are format 1
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise refuse(f"tfgraph.format: expected a format number, got {version!r}")
    if version > FORMAT:
        raise refuse(f"written by a newer tfgraph (format {version}; this one reads up to {FORMAT}): upgrade tfgraph")
    name = info.get("task")
    if not isinstance(name, str) or name not in TASKS:
        raise refuse(f"tfgraph.task: unknown task {name!r}; tasks are {', '.join(TASKS)}")
    args = checkpoint.get("hyper_parameters")
    if not isinstance(args, dict):
        raise refuse(f"hyper_parameters: expected the task's arguments as a dict, got {type(args).__name__}")
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise refuse(f"state_dict: expected a dict of tensors, got {type(state).__name__}")

    problems = Problems()

    def add(message: str) -> None:
        problems.add(KEY, f"{where}: {message}")

    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            add(f"state_dict: expected tensors by name, got {type(value).__name__} at {key!r}")
            break
    _check_size(args, refuse)
    _check_arguments(name, args, add)
    data, model = args.get("data"), args.get("model")
    _check_data_target(data if isinstance(data, dict) else None, trust_plugins, add)
    _check_safe(args, "", add)
    _check_plugins(model.get("plugins") if isinstance(model, dict) else None, trust_plugins, plugins, add)
    problems.raise_if_any()


def check_resumable(checkpoint: Mapping[str, Any], *, where: str) -> None:
    """Refuse a checkpoint without the training state that resuming restores (a weights-only checkpoint)."""
    missing = [key for key in TRAINING_STATE if not isinstance(checkpoint.get(key), list)]
    step = checkpoint.get("global_step")
    if missing or not isinstance(step, int) or isinstance(step, bool):
        what = ", ".join(missing) if missing else f"global_step {step!r}"
        raise ConfigError.at(
            KEY, f"{where}: holds no training state to resume from ({what}); it can be evaluated, not resumed"
        )
    problems = [f"{where}: {problem}" for problem in _training_state_problems(checkpoint)]
    if problems:
        raise ConfigError([(KEY, problem) for problem in problems])


def _training_state_problems(checkpoint: Mapping[str, Any]) -> list[str]:
    """What is malformed in the state Lightning restores on resuming (its version, loops, callbacks, optimizer
    and schedule states, the random state), as Lightning would otherwise fail on it with a traceback."""
    from packaging.version import InvalidVersion, Version

    found = []
    version = checkpoint.get("pytorch-lightning_version")
    try:
        if not isinstance(version, str) or Version(version) < Version("2.0"):
            found.append(
                f"pytorch-lightning_version: expected the version of Lightning 2 that wrote it, got {version!r}"
            )
    except InvalidVersion:
        found.append(f"pytorch-lightning_version: not a version: {version!r}")
    for key in ("loops", "callbacks"):
        value = checkpoint.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(item, dict) for item in value.values()):
            found.append(f"{key}: expected a dict of states (dicts), got {type(value).__name__}")
    for i, state in enumerate(checkpoint.get("optimizer_states", [])):
        groups = state.get("param_groups") if isinstance(state, dict) else None
        if not isinstance(groups, list) or not groups or not isinstance(state.get("state"), dict):
            found.append(f"optimizer_states[{i}]: expected {{state: ..., param_groups: [...]}} with parameter groups")
        elif not all(isinstance(g, dict) and isinstance(g.get("lr"), (int, float)) for g in groups):
            found.append(f"optimizer_states[{i}].param_groups: expected groups with a numeric lr")
    for i, state in enumerate(checkpoint.get("lr_schedulers", [])):
        if not isinstance(state, dict) or not all(isinstance(lr, (int, float)) for lr in state.get("base_lrs", [])):
            found.append(f"lr_schedulers[{i}]: expected a schedule's state with numeric base_lrs")
        elif "optimizer" in state:
            found.append(f"lr_schedulers[{i}].optimizer: a schedule's state does not hold its optimizer")
    rng = checkpoint.get("rng_state", {})
    if not isinstance(rng, dict) or not all(
        isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1 for t in rng.values()
    ):
        found.append("rng_state: expected random generator states (1-D uint8 tensors)")
    return found


def load_task(
    checkpoint: dict[str, Any] | str | Path,
    *,
    trust_plugins: bool = False,
    plugins: Collection[str] = (),
    where: str | None = None,
) -> Task:
    """Rebuild a task (model, head, tokenizer) from a checkpoint alone and load its weights.

    Args:
        checkpoint: a checkpoint path, or a checkpoint as read (checked again: :func:`check_checkpoint`).
        trust_plugins: let the checkpoint import the modules it names.
        plugins: the plugin modules the user's command imports itself; the checkpoint may name those.
        where: the checkpoint's path, for the messages (default: the path given, or ``checkpoint``).

    Raises:
        tfgraph.ConfigError: under ``ckpt_path``: a checkpoint :func:`load_checkpoint` refuses, or whose arguments
            or weights do not rebuild its task.
    """
    if isinstance(checkpoint, (str, Path)):
        where = where or str(checkpoint)
        checkpoint = load_checkpoint(checkpoint, trust_plugins=trust_plugins, plugins=plugins)
    else:
        where = where or "checkpoint"
        check_checkpoint(checkpoint, where=where, trust_plugins=trust_plugins, plugins=plugins)
    from tfgraph.tasks import task_class  # tfgraph.tasks imports this module

    try:
        task = task_class(checkpoint["tfgraph"]["task"])(**checkpoint["hyper_parameters"])
    except ConfigError as err:
        raise ConfigError([(KEY, f"{where}: {path}: {message}") for path, message in err.problems]) from None
    except (DataError, TypeError, ValueError, KeyError, AttributeError, IndexError) as err:  # a crafted tokenizer, ...
        raise ConfigError.at(KEY, f"{where}: its task does not rebuild: {type(err).__name__}: {err}") from None
    try:
        task.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])[:400]
        raise ConfigError.at(KEY, f"{where}: its weights do not fit its model config: {detail}") from None
    return task


def data_module_class(target: Any, *, where: str, trust_plugins: bool = False) -> type[pl.LightningDataModule]:
    """The DataModule class a checkpoint's ``data._target_`` names: one of :data:`DATA_MODULES`, or one of a module
    already imported; with ``trust_plugins`` its module is imported. Anything that is not a DataModule class is a
    ConfigError, and nothing is imported without ``trust_plugins``."""
    cls = _known_data_module(target)
    if cls is None and trust_plugins and isinstance(target, str):
        module, _, _ = target.rpartition(".")
        try:
            importlib.import_module(module)
        except Exception as err:
            raise ConfigError.at(
                KEY, f"{where}: data._target_ {target!r}: its module failed to import: {type(err).__name__}: {err}"
            ) from None
        cls = _known_data_module(target)
    if cls is None:
        raise ConfigError.at(KEY, f"{where}: {_not_a_data_module(target)}")
    return cls


def trust_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The opt-ins of a command's config for what a checkpoint may import: ``trust_plugins`` and ``plugins``
    (keyword arguments of :func:`load_checkpoint` and :func:`load_task`)."""
    trust = cfg.get("trust_plugins", False)
    if not isinstance(trust, bool):
        raise ConfigError.at("trust_plugins", f"expected true or false, got {trust!r}")
    plugins = cfg.get("plugins") or ()
    return {"trust_plugins": trust, "plugins": (plugins,) if isinstance(plugins, str) else tuple(plugins)}


# ----------------------------------------------------------------------------------------------- the checks


def _check_arguments(name: str, args: dict[str, Any], add: Callable[[str], None]) -> None:
    """The hyperparameters are the task's keyword arguments, plain containers, with a model config and a tokenizer."""
    from tfgraph.tasks import COMMON_ARGS, task_class, task_options  # tfgraph.tasks imports this module

    known = [*COMMON_ARGS, *task_options(task_class(name))]
    for key in args:
        if key not in known:
            add(f"hyper_parameters.{key}: not an argument of task {name} (its arguments: {', '.join(known)})")
    if not isinstance(args.get("model"), dict):
        add(f"hyper_parameters.model: expected the model config as a dict, got {type(args.get('model')).__name__}")
    if not isinstance(args.get("tokenizer"), str):
        add(f"hyper_parameters.tokenizer: expected the tokenizer's JSON, got {type(args.get('tokenizer')).__name__}")
    if args.get("data") is not None and not isinstance(args["data"], dict):
        add(f"hyper_parameters.data: expected the data config as a dict, got {type(args['data']).__name__}")
    try:
        check_plain(args, "hyper_parameters")
    except TypeError as err:
        add(str(err))


MAX_DEPTH = 64  # nesting levels a checkpoint's hyperparameters may have (tfgraph's own have fewer than 10)
MAX_NODES = 1_000_000  # containers and values in them, shared ones counted each time they are reached
# data options that choose where files are written (caches) or whether anything is fetched: the user's to set
LOCATION_KEYS = ("cache_dir", "cache_root", "fetch")


def _check_size(args: Any, refuse: Callable[[str], ConfigError]) -> None:
    """Refuse hyperparameters nested deeper than :data:`MAX_DEPTH` or larger than :data:`MAX_NODES` (a list
    holding itself twice at each of 40 levels is a small file and 2**40 nodes to walk), before anything walks
    them recursively."""
    stack, nodes = [(args, 0)], 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH:
            raise refuse(f"hyper_parameters: nested more than {MAX_DEPTH} levels deep: not a tfgraph checkpoint")
        if nodes > MAX_NODES:
            raise refuse(f"hyper_parameters: more than {MAX_NODES:,} values: not a tfgraph checkpoint")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((item, depth + 1) for item in value)


def stored_locations(data: Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> list[str]:
    """The data options of a checkpoint that choose where files are written or whether anything is fetched
    (``cache_dir``, ``source_options.cache_root``, ``fetch``) and that the user's ``overrides`` do not set again:
    a checkpoint may say which data it was trained on, not where this machine writes."""
    if not isinstance(data, Mapping):
        return []
    found = [f"data.{key}" for key in LOCATION_KEYS if data.get(key) is not None and key not in overrides]
    options = data.get("source_options")
    if isinstance(options, Mapping) and "source_options" not in overrides:
        found += [f"data.source_options.{key}" for key in LOCATION_KEYS if options.get(key) is not None]
    return found


def _check_safe(value: Any, path: str, add: Callable[[str], None]) -> None:
    """Refuse every ``_target_`` but ``data._target_`` and every string with an interpolation, at its key path."""
    if isinstance(value, dict):
        for key, item in value.items():
            at = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and INTERPOLATION in key:
                add(f"{at}: a key with an OmegaConf interpolation ({INTERPOLATION}...}}): never resolved; refused")
            if key == "_target_" and at != "data._target_":
                add(
                    f"{at} {item!r}: a checkpoint may not name a _target_ here; it may only name the DataModule at "
                    f"data._target_ ({', '.join(DATA_MODULES)})"
                )
            elif at not in OPAQUE:
                _check_safe(item, at, add)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_safe(item, f"{path}[{i}]", add)
    elif isinstance(value, str) and INTERPOLATION in value:
        shown = value if len(value) <= 80 else value[:77] + "..."
        add(
            f"{path} {shown!r} holds an OmegaConf interpolation ({INTERPOLATION}...}}): a checkpoint's values are "
            "data, never resolved; refused"
        )


def _check_data_target(data: dict[str, Any] | None, trust_plugins: bool, add: Callable[[str], None]) -> None:
    """Refuse a ``data._target_`` that is not a DataModule class tfgraph allows (without ``trust_plugins``)."""
    if not data or "_target_" not in data:
        return
    target = data["_target_"]
    if not isinstance(target, str) or INTERPOLATION in target:
        add(_not_a_data_module(target))
    elif not trust_plugins and _known_data_module(target) is None:
        add(_not_a_data_module(target))


def _check_plugins(modules: Any, trust_plugins: bool, plugins: Collection[str], add: Callable[[str], None]) -> None:
    """Refuse each module of ``model.plugins`` the user neither trusts nor imports in the command itself."""
    if modules is None:
        return
    for i, module in enumerate([modules] if isinstance(modules, str) else modules):
        at = f"model.plugins[{i}]"
        if not isinstance(module, str):
            add(f"{at}: expected a module name, got {module!r}")
        elif not trust_plugins and module not in plugins:
            add(
                f"{at} {module!r}: the checkpoint would import this plugin module, and a checkpoint is data, not "
                f"code; to import it, opt in: trust_plugins=true, or name it in the command's own plugins=[{module}]"
            )


def _known_data_module(target: Any) -> type[pl.LightningDataModule] | None:
    """The DataModule class ``target`` names, if it is allowlisted or already imported; never imports anything."""
    if not isinstance(target, str):
        return None
    if target in DATA_MODULES:
        return DATA_MODULES[target]
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        found: Any = sys.modules.get(".".join(parts[:cut]))
        if found is None:
            continue
        for attribute in parts[cut:]:  # the objects' own attributes: no module __getattr__, no descriptor runs
            found = vars(found).get(attribute) if hasattr(found, "__dict__") else None
        if isinstance(found, type) and issubclass(found, pl.LightningDataModule):
            return found
        return None
    return None


def _not_a_data_module(target: Any) -> str:
    return (
        f"data._target_ {target!r} is not a tfgraph data module; a checkpoint may only name "
        f"{', '.join(DATA_MODULES)}, or a DataModule class of a module the command itself imports "
        "(plugins=[<its module>]) or trusts (trust_plugins=true)"
    )
