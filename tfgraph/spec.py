"""Model config -> :class:`ModelSpec`: every key checked, sizes resolved, all mistakes reported together.

Nothing here allocates a tensor. :func:`model_spec` reads the ``model`` node of a composed config, binds
every block strictly (see :mod:`tfgraph.registry`) and parses the layer graphs (see :mod:`tfgraph.graph`);
the first problem does not stop the check, so one :class:`~tfgraph.registry.ConfigError` lists them all.
:func:`model_spec` reads top to bottom as its steps: keys and topology, sizes, parts, the model-level parts bound,
the stacks. A plain dict config needs no OmegaConf: it is read only when the config holds its nodes.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from tfgraph.blocks.kernels import BACKENDS
from tfgraph.graph import SLOTS, GraphSpec, Part, parse_graph
from tfgraph.registry import (
    ConfigError,
    Positive,
    Probability,
    Problems,
    accepts,
    check_value,
    load_plugins,
    lookup,
    suggest,
)

TOPOLOGIES = ("encoder_only", "decoder_only", "encoder_decoder")
# Model-level values that reach blocks by constructor parameter name.
SIZE_KEYS = ("d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab_size", "max_len", "dropout")
PART_KINDS = {
    "attention": "attention",
    "cross_attention": "attention",
    "ffn": "ffn",
    "norm": "norm",
    "position": "position",
    "embedding": "embedding",
    "head": "head",
}
MODEL_KEYS = (
    "topology",
    *SIZE_KEYS,
    "n_layers",
    "n_decoder_layers",
    "token_types",
    "embed_norm",
    "tie_embeddings",
    "layer",
    "pattern",
    "init_std",
    "activation_checkpointing",
    "attention_backend",
    "plugins",
    *PART_KINDS,
)
LAYER_KEYS = ("nodes", "cross_nodes", "output", "final_norm")
COUNT = Annotated[int, Positive]  # the model-level values are checked like block arguments (registry.check_value)
PROBABILITY = Annotated[float, Probability]


@dataclass(frozen=True)
class StackSpec:
    """A stack of layers: one graph per layer (repeated specs are the same object), and its masking."""

    layers: tuple[GraphSpec, ...]
    causal: bool


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a model, checked."""

    topology: str
    sizes: dict[str, Any]
    embedding: Part  # the model parts, bound (Part.kwargs)
    token_type: Part | None
    position: Part
    embed_norm: Part | None
    final_norm: Part | None
    head: Part | None
    tie_embeddings: bool
    init_std: float
    encoder: StackSpec | None  # encoder_only and encoder_decoder
    decoder: StackSpec | None  # decoder_only and encoder_decoder
    config: dict[str, Any]  # the resolved model config as plain containers
    activation_checkpointing: bool = False  # each layer graph recomputed in the backward pass instead of kept
    attention_backend: str = "auto"  # the attention kernel: auto | sdpa | flex | math (tfgraph.blocks.kernels)


def to_container(cfg: Any, path: str = "model") -> dict[str, Any]:
    """The model config as plain, resolved Python containers (from a DictConfig, or a dict that holds nodes)."""
    omegaconf = _omegaconf()
    if omegaconf is not None and isinstance(cfg, omegaconf.DictConfig):
        cfg = _resolve(cfg, path)
    if not isinstance(cfg, Mapping):
        raise ConfigError.at(path, f"expected a model config mapping, got {type(cfg).__name__}")
    return {key: _plain(value, f"{path}.{key}") for key, value in cfg.items()}


def _omegaconf() -> Any:
    """OmegaConf's module if it is imported, else None: a config node exists only then, and a plain dict config
    needs no OmegaConf (nor Hydra) installed."""
    return sys.modules.get("omegaconf")


def _resolve(node: Any, path: str) -> Any:
    """An OmegaConf node as plain containers, its interpolations resolved."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError.at(path, f"could not resolve the config: {err}") from err


def _plain(value: Any, path: str) -> Any:
    """A value of a model config with any OmegaConf node in it (``{**cfg.model, "vocab_size": 89}``) made plain."""
    omegaconf = _omegaconf()
    if omegaconf is not None and omegaconf.OmegaConf.is_config(value):
        return _resolve(value, path)
    if isinstance(value, Mapping):
        return {key: _plain(item, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{path}[{i}]") for i, item in enumerate(value)]
    return value


def model_spec(cfg: Any, path: str = "model") -> ModelSpec:
    """Check a model config and resolve it into a :class:`ModelSpec`.

    The steps, each recording its problems and going on: the model's keys and topology, the sizes and layer
    counts, the parts (:data:`PART_KINDS`), the model-level parts bound to the sizes, the stacks of layer graphs.

    Args:
        cfg: the ``model`` node of a composed config (DictConfig or plain dict).
        path: its config path, for messages.

    Raises:
        ConfigError: listing every problem found, each with its config path.
    """
    cfg = to_container(cfg, path)
    load_plugins(cfg.get("plugins"), f"{path}.plugins")
    problems = Problems()
    topology = _topology(cfg, path, problems)
    sizes = _sizes(cfg, path, problems)
    n_layers = _count(cfg, "n_layers", path, problems)
    n_decoder_layers = cfg.get("n_decoder_layers")
    if topology == "encoder_decoder":
        n_decoder_layers = n_layers if n_decoder_layers is None else _count(cfg, "n_decoder_layers", path, problems)
    parts = _parts(cfg, topology, path, problems)
    found = _Found(cfg, topology, sizes, (n_layers, n_decoder_layers), parts, path, problems)
    outer = _model_parts(found)
    stacks = _stacks(found)
    init_std = cfg.get("init_std", 0.02)
    if (message := check_value(init_std, Annotated[float, Positive])) is not None:
        problems.add(f"{path}.init_std", message)
    checkpointing = _flag(cfg, "activation_checkpointing", False, path, problems)
    backend = cfg.get("attention_backend", "auto")
    if backend not in BACKENDS:
        problems.add(f"{path}.attention_backend", f"expected one of {', '.join(BACKENDS)}, got {backend!r}")
    problems.raise_if_any()
    return ModelSpec(
        topology=topology,
        sizes=sizes,
        init_std=float(init_std),
        config=cfg,
        activation_checkpointing=checkpointing,
        attention_backend=backend,
        **outer,
        **stacks,
    )


def _topology(cfg: Mapping[str, Any], path: str, problems: Problems) -> str | None:
    """The topology, after checking that every key of the model config is a model key."""
    for key in cfg:
        if key not in MODEL_KEYS:
            problems.add(
                f"{path}.{key}", f"unknown model key{suggest(key, MODEL_KEYS)}; model keys are {', '.join(MODEL_KEYS)}"
            )
    topology = cfg.get("topology")
    if topology not in TOPOLOGIES:
        problems.add(
            f"{path}.topology",
            f"expected one of {', '.join(TOPOLOGIES)}, got {topology!r}{suggest(topology, TOPOLOGIES)}",
        )
        return None
    return topology


def _parts(cfg: Mapping[str, Any], topology: str | None, path: str, problems: Problems) -> dict[str, Part | None]:
    """The model's parts, unbound (``None`` for one whose config is wrong); cross-attention only in an
    encoder_decoder, a head in every topology but encoder_only."""
    parts: dict[str, Part | None] = {}
    for name, kind in PART_KINDS.items():
        if name == "cross_attention" and topology != "encoder_decoder":
            continue
        if name == "head" and topology == "encoder_only":
            continue
        parts[name] = _part(cfg.get(name), kind, f"{path}.{name}", problems)
    return parts


@dataclass(frozen=True)
class _Found:
    """What the later steps of :func:`model_spec` read: the config, what the first steps found, where problems go."""

    cfg: Mapping[str, Any]
    topology: str | None
    sizes: Mapping[str, Any]
    layers: tuple[int | None, int | None]  # the layer counts of the (first) stack and of an encoder_decoder's decoder
    parts: Mapping[str, Part | None]
    path: str
    problems: Problems

    def bound(self, name: str, **overrides: Any) -> Part | None:
        """The part ``name`` bound to the sizes (with ``overrides`` of them), or None when it is missing or wrong."""
        part = self.parts.get(name)
        return None if part is None else part.bound({**self.sizes, **overrides}, self.problems)


def _model_parts(found: _Found) -> dict[str, Any]:
    """The parts outside the layers, bound: embedding, token types, position, embedding norm, head, tying."""
    cfg, path, problems = found.cfg, found.path, found.problems
    outer = {
        "embedding": found.bound("embedding"),
        "position": found.bound("position"),
        "head": found.bound("head") if found.topology != "encoder_only" else None,
        "token_type": None,
    }
    token_types = cfg.get("token_types", 0)
    if token_types:
        if not isinstance(token_types, int) or isinstance(token_types, bool) or token_types < 0:
            problems.add(f"{path}.token_types", f"expected a count of token types >= 0, got {token_types!r}")
        else:
            outer["token_type"] = found.bound("embedding", vocab_size=token_types)
    outer["embed_norm"] = found.bound("norm") if _flag(cfg, "embed_norm", False, path, problems) else None
    outer["tie_embeddings"] = _flag(cfg, "tie_embeddings", True, path, problems)  # shapes are checked in the dry run
    return outer


def _stacks(found: _Found) -> dict[str, Any]:
    """The encoder and decoder stacks of the topology (each layer's graph, by the pattern) and the final norm."""
    cfg, topology, path, problems = found.cfg, found.topology, found.path, found.problems
    n_layers, n_decoder_layers = found.layers
    stacks: dict[str, Any] = {"encoder": None, "decoder": None, "final_norm": None}
    layer = cfg.get("layer")
    if not isinstance(layer, Mapping):
        problems.add(f"{path}.layer", f"expected a layer graph (choose one with model/layer=...), got {layer!r}")
        return stacks
    for key in layer:
        if key not in LAYER_KEYS:
            problems.add(
                f"{path}.layer.{key}",
                f"unknown layer key{suggest(key, LAYER_KEYS)}; layer keys are {', '.join(LAYER_KEYS)}",
            )
    if _flag(layer, "final_norm", True, f"{path}.layer", problems):
        stacks["final_norm"] = found.bound("norm")
    pattern = _pattern(cfg.get("pattern"), f"{path}.pattern", problems)

    def graphs(key: str, inputs: tuple[str, ...]) -> list[GraphSpec | None]:
        return _layers(layer, key, inputs, found.parts, pattern, found.sizes, path, problems)

    if topology in ("encoder_only", "encoder_decoder") and n_layers:
        stacks["encoder"] = _stack(graphs("nodes", ("x",)), n_layers, causal=False)
    if topology == "decoder_only" and n_layers:
        stacks["decoder"] = _stack(graphs("nodes", ("x",)), n_layers, causal=True)
    if topology == "encoder_decoder" and n_decoder_layers:
        if "cross_nodes" not in layer:
            problems.add(
                f"{path}.layer.cross_nodes", "an encoder_decoder needs the decoder layer's graph (`cross_nodes`)"
            )
        else:
            stacks["decoder"] = _stack(graphs("cross_nodes", ("x", "memory")), n_decoder_layers, causal=True)
    return stacks


def _sizes(cfg: Mapping[str, Any], path: str, problems: Problems) -> dict[str, Any]:
    sizes: dict[str, Any] = {}
    for key in ("d_model", "n_heads", "d_ff", "vocab_size", "max_len"):
        sizes[key] = _count(cfg, key, path, problems)
    n_kv = cfg.get("n_kv_heads")
    sizes["n_kv_heads"] = sizes["n_heads"] if n_kv is None else _count(cfg, "n_kv_heads", path, problems)
    sizes["head_dim"] = None if cfg.get("head_dim") is None else _count(cfg, "head_dim", path, problems)
    dropout = cfg.get("dropout", 0.0)
    if (message := check_value(dropout, PROBABILITY)) is not None:
        problems.add(f"{path}.dropout", message)
        dropout = 0.0
    sizes["dropout"] = float(dropout)

    d_model, n_heads, n_kv = sizes["d_model"], sizes["n_heads"], sizes["n_kv_heads"]
    if d_model and n_heads and d_model % n_heads and sizes["head_dim"] is None:
        problems.add(
            f"{path}.n_heads",
            f"model.d_model ({d_model}) is not divisible by model.n_heads ({n_heads}): each head gets "
            f"d_model / n_heads dimensions; pick n_heads among {_divisors(d_model)}, change d_model or set model.head_dim",
        )
    if n_heads and n_kv and n_heads % n_kv:
        problems.add(
            f"{path}.n_kv_heads",
            f"model.n_heads ({n_heads}) is not divisible by model.n_kv_heads ({n_kv}): query heads share key/value "
            f"heads in equal groups; pick n_kv_heads among {_divisors(n_heads)}",
        )
    return sizes


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0 and d <= 64)


def _count(cfg: Mapping[str, Any], key: str, path: str, problems: Problems) -> int | None:
    value = cfg.get(key)
    if (message := check_value(value, COUNT)) is not None:
        problems.add(f"{path}.{key}", message)
        return None
    return value


def _flag(cfg: Mapping[str, Any], key: str, default: bool, path: str, problems: Problems) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        problems.add(f"{path}.{key}", f"expected true or false, got {value!r}")
        return default
    return value


def _part(value: Any, kind: str, path: str, problems: Problems) -> Part | None:
    if not isinstance(value, Mapping) or "block" not in value:
        article = "an" if kind[0] in "aeiou" else "a"
        problems.add(path, f"expected {article} {kind} block config with a `block` name, got {value!r}")
        return None
    cls = lookup(kind, value["block"], f"{path}.block", problems)
    if cls is None:
        return None
    return Part(cls=cls, config={k: v for k, v in value.items() if k != "block"}, path=path)


def _pattern(value: Any, path: str, problems: Problems) -> list[tuple[Mapping[str, Any], str]]:
    """The per-layer overrides, each with its config path; ``[({}, "")]`` when there is no pattern."""
    if value is None:
        return [({}, "")]
    if not isinstance(value, (list, tuple)) or not value:
        problems.add(path, f"expected a non-empty list of per-layer overrides, got {value!r}")
        return [({}, "")]
    items = []
    for i, item in enumerate(value):
        item = item or {}
        if not isinstance(item, Mapping):
            problems.add(f"{path}[{i}]", f"expected a mapping of part to overrides, got {item!r}")
            item = {}
        for key in item:
            if key not in SLOTS:
                problems.add(
                    f"{path}[{i}].{key}", f"a pattern overrides the parts {', '.join(SLOTS)}{suggest(key, SLOTS)}"
                )
        items.append(({k: v for k, v in item.items() if k in SLOTS}, f"{path}[{i}]"))
    return items


def _layers(
    layer: Mapping[str, Any],
    key: str,
    inputs: tuple[str, ...],
    parts: Mapping[str, Part | None],
    pattern: list[tuple[Mapping[str, Any], str]],
    sizes: Mapping[str, Any],
    path: str,
    problems: Problems,
) -> list[GraphSpec | None]:
    """One graph spec per pattern entry (the stack cycles through them)."""
    graphs = []
    for overrides, where in pattern:
        layer_parts = dict(parts)
        for name, override in overrides.items():
            layer_parts[name] = _override(parts.get(name), override, PART_KINDS[name], f"{where}.{name}", problems)
        graphs.append(
            parse_graph(
                layer.get(key),
                inputs=inputs,
                output=layer.get("output", "out"),
                parts=layer_parts,
                context=sizes,
                path=f"{path}.layer.{key}",
                problems=problems,
            )
        )
    return graphs


def _override(base: Part | None, override: Any, kind: str, path: str, problems: Problems) -> Part | None:
    """A pattern entry's part: the base part with the entry's keys replaced, or a new block when it names one.

    A new block keeps every argument of the base part it takes (``bias: false`` of a preset stays off in the
    layers that swap their attention); one it does not take is a problem at the entry that names the two ways
    out. ``inherit: false`` starts the entry from its block's defaults instead.
    """
    if not isinstance(override, Mapping):
        problems.add(path, f"expected a mapping of {kind} arguments, got {override!r}")
        return base
    override = dict(override)
    inherit = override.pop("inherit", True)
    if not isinstance(inherit, bool):
        problems.add(
            f"{path}.inherit", f"expected true or false (keep the arguments of the part overridden), got {inherit!r}"
        )
        inherit = True
    if "block" in override:
        part = _part(override, kind, path, problems)
    elif base is not None:
        part = Part(cls=base.cls, config=override, path=path)
    else:
        return None
    if part is None or base is None or not inherit:
        return part
    kept: dict[str, str] = {}  # argument -> the config path it comes from
    for key in base.config:
        source = base.key_paths.get(key, f"{base.path}.{key}")
        if key in part.config:
            continue
        if part.cls is base.cls or accepts(part.cls, key):  # the same block reports its unknown keys when bound
            kept[key] = source
            continue
        problems.add(
            f"{path}.{key}",
            f"{kind} block {override['block']!r} ({part.cls.__name__}) takes no argument {key!r} (set by {source}); "
            f"drop it with ~{source} (from every layer) or give this entry `inherit: false` (to start from "
            f"{override['block']!r}'s defaults)",
        )
    config = {**{key: base.config[key] for key in kept}, **part.config}
    return Part(cls=part.cls, config=config, path=path, key_paths=kept)


def _stack(graphs: list[GraphSpec | None], n_layers: int, *, causal: bool) -> StackSpec | None:
    if any(g is None for g in graphs):
        return None
    return StackSpec(layers=tuple(graphs[i % len(graphs)] for i in range(n_layers)), causal=causal)
