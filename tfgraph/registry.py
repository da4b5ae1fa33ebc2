"""The block registry: kinds, names, strict argument binding and plugin import.

A block is a plain ``nn.Module`` registered under a kind and a name::

    @tfgraph.register("norm", "my_norm")
    class MyNorm(nn.Module):
        def __init__(self, *, d_model: int, eps: float = 1e-6) -> None: ...

The registry imports no block: a block registers when its module is imported. ``import tfgraph`` imports
:mod:`tfgraph.blocks` (the built-ins), a config's ``plugins`` list and the ``tfgraph.plugins`` entry points (read
on the first lookup) bring the rest. How the graph calls a block (the context and cache it takes, the auxiliary
loss it reports) is read from its class once, when it registers: see :class:`BlockProtocol`.

Model-level sizes (``d_model``, ``n_heads``, ...) reach a block by constructor parameter name; a block's
own config carries only what is its own. Binding is strict: unknown keys, missing arguments and wrong
types are collected into a :class:`Problems` list, each with its config path, and raised together as one
:class:`ConfigError`.

A block states the values its arguments may take in its signature, and :func:`bind` checks them before
anything is built, reporting each at its config path (``model.norm.eps: expected a positive number, got -1``):

- one argument's domain, with ``Annotated`` and a :class:`Constraint` (:data:`Positive`, :data:`Finite`,
  :data:`Probability`, :func:`AtLeast`, :func:`Interval`, or a ``Constraint`` of your own)::

      def __init__(self, *, d_model: int, eps: Annotated[float, Positive] = 1e-6,
                   window: Annotated[int, AtLeast(1)] = 4096, scale: Annotated[float, Positive] | None = None)

- relations between arguments, with a static ``check_args`` that receives every bound argument and returns
  ``{argument: message}`` for each broken one (run only when the arguments passed their own checks)::

      @staticmethod
      def check_args(*, n_experts: int, top_k: int, **_: Any) -> dict[str, str]:
          return {"top_k": f"expected at most n_experts ({n_experts}), got {top_k}"} if top_k > n_experts else {}
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Annotated, Any, Literal, TypeVar, Union

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

    @classmethod
    def at(cls, path: str, message: str) -> ConfigError:
        """The error of one problem: ``raise ConfigError.at("data.path", "no such file: x.txt")``."""
        return cls([(path, message)])


class Problems:
    """Collects config problems so that all of them are reported together.

    A problem found twice (a model part bound by every node that uses it) is listed once. To learn whether a
    step found anything, compare :meth:`mark` before it with :meth:`since` after it: they count every
    :meth:`add`, repeats included, which ``len(items)`` does not.
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self._added = 0

    def add(self, path: str, message: str) -> None:
        self._added += 1
        if (path, message) not in self.items:
            self.items.append((path, message))

    def mark(self) -> int:
        """A marker for :meth:`since`: how many problems were added so far, repeats included."""
        return self._added

    def since(self, mark: int) -> bool:
        """Whether a problem was added after ``mark`` (also one listed already)."""
        return self._added > mark

    def collect(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)``, or None with the problems of the ConfigError it raises added here (so that
        independent checks are all reported together)."""
        try:
            return function(*args)
        except ConfigError as err:
            for path, message in err.problems:
                self.add(path, message)
            return None

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


@dataclass(frozen=True)
class Constraint:
    """A condition on an argument's value, stated with ``Annotated`` and checked by :func:`bind`.

    ``Annotated[float, Positive]`` or ``Annotated[int, AtLeast(1)] | None``: the type is checked first, then the
    condition (``None`` passes through its own arm of the union).

    Attributes:
        test: whether a value (of the annotated type) is allowed.
        description: what is allowed, with ``{noun}`` standing for "integer" or "number" after the annotated
            type and ``{a_noun}`` for "an integer" or "a number" (``"a positive {noun}"``, ``"{a_noun} >= 1"``).
    """

    test: Callable[[Any], bool]
    description: str

    def describe(self, base: Any) -> str:
        """The description for an argument annotated with type ``base``."""
        noun = "integer" if base is int else "number"
        return self.description.format(noun=noun, a_noun=("an " if base is int else "a ") + noun)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except TypeError:
        return False


def Interval(  # noqa: N802 (reads as a type: Annotated[float, Interval(gt=0, le=1)])
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    description: str | None = None,
) -> Constraint:
    """A finite number within bounds: above ``gt`` (or from ``ge``), below ``lt`` (or up to ``le``).

    ``description`` replaces the one made from the bounds (``"{a_noun} in (0, 1]"``).
    """
    if description is None:
        low = f"({gt:g}" if gt is not None else f"[{ge:g}" if ge is not None else ""
        high = f"{lt:g})" if lt is not None else f"{le:g}]" if le is not None else ""
        bounds = [f"{op} {v:g}" for op, v in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if v is not None]
        description = (
            f"{{a_noun}} in {low}, {high}"
            if low and high
            else " ".join(["{a_noun}", *bounds])
            if bounds
            else "a finite {noun}"
        )

    def test(value: Any) -> bool:
        return (
            _finite(value)
            and (gt is None or value > gt)
            and (ge is None or value >= ge)
            and (lt is None or value < lt)
            and (le is None or value <= le)
        )

    return Constraint(test, description)


def AtLeast(n: int) -> Constraint:  # noqa: N802 (reads as a type: Annotated[int, AtLeast(1)])
    """A finite number ``>= n``."""
    return Interval(ge=n)


Positive = Interval(gt=0, description="a positive {noun}")
"""A finite number ``> 0`` (an epsilon, a scale, a base)."""
Finite = Interval()
"""Any finite number (no ``inf``, no ``nan``)."""
Probability = Interval(ge=0, lt=1, description="a probability in [0, 1)")
"""A dropout probability: ``0 <= p < 1``."""


def check_value(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not meet ``hint`` (its type and :class:`Constraint` s), as ``"expected ..., got ..."``.

    ``None`` when it does. The model-level sizes are checked with this too (``Annotated[int, Positive]``).
    """
    if not _fits(value, hint):
        return f"expected {_describe(hint, constraints=True)}, got {value!r}"
    broken = _violation(value, hint)
    return None if broken is None else f"expected {broken}, got {value!r}"


def _violation(value: Any, hint: Any) -> str | None:
    """The description of the first constraint ``value`` breaks (``value`` fits the type of ``hint``)."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *meta = typing.get_args(hint)
        for constraint in meta:
            if isinstance(constraint, Constraint) and not constraint.test(value):
                return constraint.describe(base)
        return _violation(value, base)
    if origin in (Union, types.UnionType):
        broken = [_violation(value, arm) for arm in typing.get_args(hint) if _fits(value, arm)]
        return None if not broken or None in broken else broken[0]
    return None


def suggest(name: str, choices: Iterable[str]) -> str:
    """A ``did you mean`` hint listing the choices closest to ``name`` (empty when none is close)."""
    close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


NEEDS = ("context", "cache")  # what a block may declare in `needs`


@dataclass(frozen=True)
class BlockProtocol:
    """How the graph and the stack call a block, read once from its class when it is registered.

    A block states it with class attributes: ``needs``, a tuple of :data:`NEEDS` (``"context"``: it takes the
    stack's :class:`~tfgraph.blocks.context.AttentionContext` after its inputs; ``"cache"``: it also keeps a cache,
    made by ``new_cache(batch, max_len, *, dtype, device)`` and passed after the context while generating), and,
    when it reports an auxiliary loss (a mixture of experts' load balancing), the annotation ``aux_loss: Tensor``
    of the attribute it sets on each forward. A block that takes the context may name its sliding window in
    ``self.window`` (its mask's key in ``ctx.masks``; ``None`` or absent: global attention). The masks are in the
    form of the kernel the stack chose (``ctx.kernel``; :mod:`tfgraph.blocks.kernels`): scoring through
    ``ScaledDotProductAttention.attend`` serves them all.

    Attributes:
        kind: the kind it is registered under (``None`` for a class never registered).
        name: the name it is registered under (``None`` likewise).
        context: it takes the attention context after its inputs.
        cache: it keeps a cache and takes it after the context.
        aux_loss: it reports an auxiliary loss in ``self.aux_loss``.
    """

    kind: str | None
    name: str | None
    context: bool = False
    cache: bool = False
    aux_loss: bool = False

    @property
    def needs(self) -> tuple[str, ...]:
        """The declared needs, in :data:`NEEDS` order."""
        return tuple(need for need, on in zip(NEEDS, (self.context, self.cache), strict=True) if on)

    @property
    def plumbed(self) -> int:
        """How many arguments the graph passes after a node's inputs (the context, the cache)."""
        return self.context + self.cache

    def window(self, block: Any) -> int | None:
        """The sliding window of a built block (``None``: global attention, or a block without the context)."""
        return getattr(block, "window", None) if self.context else None


_PROTOCOLS: dict[type, BlockProtocol] = {}


def read_protocol(cls: type, kind: str | None = None, name: str | None = None) -> BlockProtocol:
    """A block class's :class:`BlockProtocol`, from its class attributes (see there).

    Raises:
        TypeError: ``needs`` that is not a tuple of :data:`NEEDS`, or a cache without the context.
    """
    needs = getattr(cls, "needs", ())
    if isinstance(needs, str) or not isinstance(needs, (tuple, list)) or any(n not in NEEDS for n in needs):
        raise TypeError(f"{cls.__name__} declares needs={needs!r}: expected a tuple of {', '.join(map(repr, NEEDS))}")
    if "cache" in needs and "context" not in needs:
        raise TypeError(f"{cls.__name__} declares needs={needs!r}: a block with a cache needs the context")
    aux = any("aux_loss" in vars(klass).get("__annotations__", {}) for klass in cls.__mro__)
    return BlockProtocol(kind=kind, name=name, context="context" in needs, cache="cache" in needs, aux_loss=aux)


def block_protocol(cls: type) -> BlockProtocol:
    """The protocol of a block class: the one read when it was registered, else read from the class now."""
    known = _PROTOCOLS.get(cls)
    return known if known is not None else read_protocol(cls)


def registered_kind(cls: type) -> str | None:
    """The kind a class, or the nearest class it derives from, is registered under (``None``: not a block)."""
    return next((_PROTOCOLS[klass].kind for klass in cls.__mro__ if klass in _PROTOCOLS), None)


def reports_aux_loss(cls: type) -> bool:
    """Whether a registered block class declares an auxiliary loss (False for any other class)."""
    known = _PROTOCOLS.get(cls)
    return known is not None and known.aux_loss


def register(kind: str, name: str) -> Callable[[_T], _T]:
    """Class decorator registering a block under ``kind`` and ``name``.

    Its :class:`BlockProtocol` is read from the class here, once.

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
        protocol = read_protocol(cls, kind, name)
        _REGISTRY[kind][name] = cls
        _PROTOCOLS[cls] = protocol
        cls.block_kind = kind
        cls.block_name = name
        return cls

    return decorate


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def names(kind: str) -> list[str]:
    """The registered names of one kind, sorted."""
    load_entry_point_plugins()
    return sorted(_REGISTRY[kind])


def lookup(kind: str, name: Any, path: str, problems: Problems) -> type | None:
    """The block class registered as ``kind``/``name``, or ``None`` with a problem recorded at ``path``."""
    load_entry_point_plugins()
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

    A given value must also meet the :class:`Constraint` s of its ``Annotated`` hint, and when every argument
    (model-level sizes and defaults included) is valid on its own, ``cls.check_args(**kwargs)`` (if the block has
    one) may report relations between arguments; see the module docstring.
    """
    start = problems.mark()
    params = _parameters(cls)
    hints = _hints(cls)
    key_paths = key_paths or {}
    kwargs: dict[str, Any] = {}
    where = (
        f"{cls.block_kind} block {cls.block_name!r} ({cls.__name__})" if hasattr(cls, "block_name") else cls.__name__
    )
    for key, value in given.items():
        if key not in params:
            where_key = key_paths.get(key, f"{path}.{key}")
            problems.add(where_key, _unknown_argument(where, key, where_key, params, context))
            continue
        hint = hints.get(key, Any)
        if not _fits(value, hint):
            problems.add(key_paths.get(key, f"{path}.{key}"), f"{where} expects {_describe(hint)}, got {value!r}")
            continue
        broken = _violation(value, hint)
        if broken is not None:
            problems.add(key_paths.get(key, f"{path}.{key}"), f"expected {broken}, got {value!r}")
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
    check_args = getattr(cls, "check_args", None)
    complete = not problems.since(start) and all(check_value(v, hints.get(k, Any)) is None for k, v in kwargs.items())
    if check_args is not None and complete:  # every argument, model-level sizes included, is valid on its own
        try:
            broken_args = dict(check_args(**kwargs))
        except Exception as err:  # a plugin's check that fails is reported like its constructor failing
            broken_args = {"": f"{where}.check_args failed: {type(err).__name__}: {err}"}
        for name, message in broken_args.items():
            problems.add(key_paths.get(name, f"{path}.{name}") if name else path, message)
    return kwargs


_F = TypeVar("_F", bound=Callable[..., Any])


def extend_arguments(base: Callable[..., Any]) -> Callable[[_F], _F]:
    """Decorator for a variant's ``__init__`` that adds arguments to its parent's instead of repeating them.

    The variant takes its own keyword arguments and ``**arguments`` for the parent's; its signature (what
    :func:`bind`, ``tfgraph-show`` and ``help()`` read) becomes the parent's keyword arguments followed by its own,
    with their type hints and constraints::

        @register("attention", "sliding_window")
        class SlidingWindowAttention(MultiHeadAttention):
            @extend_arguments(MultiHeadAttention.__init__)
            def __init__(self, *, window: Annotated[int, AtLeast(1)] = 4096, **arguments: Any) -> None:
                super().__init__(**arguments)
                self.window = window

    Args:
        base: the parent's ``__init__``.
    """

    def decorate(init: _F) -> _F:
        own_signature = inspect.signature(init)
        own = [p for p in own_signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        hints = {**typing.get_type_hints(base, include_extras=True), **typing.get_type_hints(init, include_extras=True)}
        inherited = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for name, p in inspect.signature(base).parameters.items()
            if name != "self"
            and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            and name not in {q.name for q in own}
        ]
        params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in (*inherited, *own)]
        self_param = next(iter(own_signature.parameters.values()))
        init.__signature__ = own_signature.replace(parameters=[self_param, *params], return_annotation=None)
        init.__annotations__ = {**{p.name: p.annotation for p in params}, "return": None}
        return init

    return decorate


def _unknown_argument(
    where: str, key: str, where_key: str, params: Mapping[str, inspect.Parameter], context: Mapping[str, Any]
) -> str:
    """Why ``key`` is refused: the block's own arguments, the closest of them, or the model-level size it means."""
    own = sorted(p for p in params if p not in context)
    close = difflib.get_close_matches(key, [*own, *context], n=1, cutoff=0.6)
    if key in context or (close and close[0] in context):
        size = key if key in context else close[0]
        hint = f"; {size!r} is a model-level size: set model.{size}"
    else:
        hint = suggest(key, own)
    return (
        f"{where} takes no argument {key!r}{hint}. It takes: {', '.join(own) or 'nothing'} "
        f"(a key left over from another block can be dropped with ~{where_key})"
    )


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
        return typing.get_type_hints(cls.__init__, include_extras=True)
    except Exception:  # unresolvable annotations: bind without type checks
        return {}


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _fits(value, typing.get_args(hint)[0])
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


def _describe(hint: Any, *, constraints: bool = False) -> str:
    """What a hint allows (``"a number or null"``); with ``constraints``, the first constraint of each type."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *meta = typing.get_args(hint)
        stated = [c for c in meta if isinstance(c, Constraint)]
        return stated[0].describe(base) if constraints and stated else _describe(base)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arm, constraints=constraints) for arm in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if isinstance(hint, type):
        return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(
            hint.__name__, hint.__name__
        )
    return str(hint)


# ----------------------------------------------------------------------------------------------- plugins

_entry_points_loaded = False


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
            raise ConfigError.at(
                "",
                f"plugin entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP!r} failed to import: {err}",
            ) from err


def load_plugins(modules: Any, path: str = "plugins") -> None:
    """Import the plugin modules a config lists (``plugins: [my_package.blocks]``); blocks register on import."""
    if modules is None:
        return
    if isinstance(modules, str):
        modules = [modules]
    if not isinstance(modules, Sequence):
        raise ConfigError.at(path, f"expected a list of module names, got {modules!r}")
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
