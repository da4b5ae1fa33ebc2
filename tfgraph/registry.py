"""The block registry: kinds, names, strict argument binding and plugin import.

A block is a plain ``nn.Module`` registered under a kind and a name::

    @tfgraph.register("norm", "my_norm")
    class MyNorm(nn.Module):
        def __init__(self, *, d_model: int, eps: float = 1e-6) -> None: ...

Model-level sizes (``d_model``, ``n_heads``, ...) reach a block by constructor parameter name; a block's
own config carries only what is its own. Binding is strict: unknown keys, missing arguments and wrong
types are collected into a :class:`Problems` list, each with its config path, and raised together as one
:class:`ConfigError`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any, Literal, TypeVar, Union

KINDS = ("attention", "ffn", "norm", "position", "embedding", "head", "op")
ENTRY_POINT_GROUP = "tfgraph.plugins"

_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
_T = TypeVar("_T", bound=type)


class ConfigError(ValueError):
    """Every config mistake: carries the list of ``(config path, message)`` problems found."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = list(problems)
        lines = [f"{path}: {message}" if path else message for path, message in self.problems]
        head = "invalid config" if len(lines) == 1 else f"invalid config ({len(lines)} problems)"
        super().__init__(head + ":\n" + "\n".join(f"  - {line}" for line in lines))


class Problems:
    """Collects config problems so that all of them are reported together."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        if (path, message) not in self.items:
            self.items.append((path, message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def suggest(name: str, choices: Iterable[str]) -> str:
    """A ``did you mean`` hint listing the choices closest to ``name`` (empty when none is close)."""
    close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def register(kind: str, name: str) -> Callable[[_T], _T]:
    """Class decorator registering a block under ``kind`` and ``name``.

    Args:
        kind: one of :data:`KINDS`.
        name: the name configs use (``model.norm.block=name``).
    """
    if kind not in _REGISTRY:
        raise ValueError(f"unknown block kind {kind!r}; kinds are {', '.join(KINDS)}{suggest(kind, KINDS)}")

    def decorate(cls: _T) -> _T:
        known = _REGISTRY[kind].get(name)
        if known is not None and _qualname(known) != _qualname(cls):
            raise ValueError(f"{kind} block {name!r} is already registered by {_qualname(known)}")
        _REGISTRY[kind][name] = cls
        cls.block_kind = kind
        cls.block_name = name
        return cls

    return decorate


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def names(kind: str) -> list[str]:
    """The registered names of one kind, sorted."""
    _ensure_builtins()
    return sorted(_REGISTRY[kind])


def lookup(kind: str, name: Any, path: str, problems: Problems) -> type | None:
    """The block class registered as ``kind``/``name``, or ``None`` with a problem recorded at ``path``."""
    _ensure_builtins()
    if not isinstance(name, str) or not name:
        problems.add(path, f"expected the name of a registered {kind} block, got {name!r}")
        return None
    cls = _REGISTRY[kind].get(name)
    if cls is None:
        elsewhere = [k for k in KINDS if name in _REGISTRY[k]]
        hint = f" ({name!r} is a registered {elsewhere[0]} block)" if elsewhere else ""
        problems.add(
            path,
            f"unknown {kind} block {name!r}{suggest(name, _REGISTRY[kind])}{hint}. "
            f"Registered {kind} blocks: {', '.join(sorted(_REGISTRY[kind]))}. "
            "Blocks come from tfgraph.blocks, the config's `plugins` list and the "
            f"'{ENTRY_POINT_GROUP}' entry points.",
        )
    return cls


def bind(
    cls: type,
    given: Mapping[str, Any],
    *,
    context: Mapping[str, Any],
    path: str,
    problems: Problems,
    key_paths: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Bind a block's constructor arguments strictly.

    Args:
        cls: the block class.
        given: the block's own config (without ``block``); every key must be a constructor parameter.
        context: model-level values (``d_model``, ``n_heads``, ...) handed to parameters of the same name.
        path: config path of ``given``, for messages (``model.attention``).
        problems: where mistakes are recorded.
        key_paths: the config path of particular keys, where ``given`` was merged from several places.

    Returns:
        Every keyword argument to construct ``cls`` with, defaults included (possibly incomplete when problems
        were found).
    """
    params = _parameters(cls)
    hints = _hints(cls)
    key_paths = key_paths or {}
    kwargs: dict[str, Any] = {}
    where = (
        f"{cls.block_kind} block {cls.block_name!r} ({cls.__name__})" if hasattr(cls, "block_name") else cls.__name__
    )
    for key, value in given.items():
        if key not in params:
            own = sorted(p for p in params if p not in context)
            where_key = key_paths.get(key, f"{path}.{key}")
            close = difflib.get_close_matches(key, [*own, *context], n=1, cutoff=0.6)
            if key in context or (close and close[0] in context):
                size = key if key in context else close[0]
                hint = f"; {size!r} is a model-level size: set model.{size}"
            else:
                hint = suggest(key, own)
            problems.add(
                where_key,
                f"{where} takes no argument {key!r}{hint}. It takes: {', '.join(own) or 'nothing'} "
                f"(a key left over from another block can be dropped with ~{where_key})",
            )
            continue
        hint = hints.get(key, Any)
        if not _fits(value, hint):
            problems.add(key_paths.get(key, f"{path}.{key}"), f"{where} expects {_describe(hint)}, got {value!r}")
            continue
        kwargs[key] = value
    for name, param in params.items():
        if name in kwargs:
            continue
        if name in context:
            kwargs[name] = context[name]
        elif param.default is not inspect.Parameter.empty:
            kwargs[name] = param.default  # explicit, so that every resolved argument can be shown
        else:
            problems.add(f"{path}.{name}", f"{where} needs a value for {name!r}")
    return kwargs


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(cls.__init__)
    return {
        name: p
        for name, p in sig.parameters.items()
        if name != "self" and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }


def accepts(cls: type, name: str) -> bool:
    """Whether a block's constructor has a parameter ``name``."""
    return name in _parameters(cls)


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: bind without type checks
        return {}


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin in (dict, Mapping) or hint is dict:
        return isinstance(value, Mapping)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if isinstance(hint, type):
        return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(
            hint.__name__, hint.__name__
        )
    return str(hint)


# ----------------------------------------------------------------------------------------------- plugins

_builtins_loaded = False
_entry_points_loaded = False


def _ensure_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        importlib.import_module("tfgraph.blocks")
        load_entry_point_plugins()


def load_entry_point_plugins() -> None:
    """Import every module advertised under the ``tfgraph.plugins`` entry-point group (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as err:  # a broken plugin must say which one it is
            raise ConfigError(
                [
                    (
                        "",
                        f"plugin entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP!r} failed to import: {err}",
                    )
                ]
            ) from err


def load_plugins(modules: Any, path: str = "plugins") -> None:
    """Import the plugin modules a config lists (``plugins: [my_package.blocks]``); blocks register on import."""
    if modules is None:
        return
    if isinstance(modules, str):
        modules = [modules]
    problems = Problems()
    for i, module in enumerate(modules):
        if not isinstance(module, str):
            problems.add(f"{path}[{i}]", f"expected a module name, got {module!r}")
            continue
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            problems.add(
                f"{path}[{i}]",
                f"plugin module {module!r} was not found ({err}); install it or put its folder on PYTHONPATH",
            )
        except Exception as err:
            problems.add(f"{path}[{i}]", f"plugin module {module!r} failed to import: {type(err).__name__}: {err}")
    problems.raise_if_any()
