"""How a tfgraph model's tensors correspond to a Hugging Face checkpoint's, both ways.

Two declarations meet here, neither of them a script per family:

- **Each block** says how its own parameters are made of *pieces* (its class attribute ``hf_layout``): multi-head
  attention's ``qkv`` is the pieces ``q``, ``k`` and ``v`` stacked along the output dimension, a gated FFN's
  ``gate_up`` is ``gate`` and ``up``, a norm's ``weight`` and ``bias`` are the piece ``norm``. A block without
  ``hf_layout`` (a mixture of experts, a user's plugin that declares none) has no mapping, and a model using it is
  an error naming its node.
- **Each family** (:mod:`tfgraph.interop.families`) says where a Hugging Face checkpoint of that architecture keeps
  each piece at each location: ``decoder.layers.{i}.attn`` is ``model.layers.{i}.self_attn`` with ``q`` in
  ``q_proj``, ... (Llama); ``q``, ``k`` and ``v`` fused in one ``attn.c_attn`` stored ``[in, out]`` (GPT-2, see
  :class:`HF`); interleaved per head in ``attention.query_key_value`` (GPT-NeoX).

:func:`import_state` and :func:`export_state` walk the model's modules, so a config that mixes parts maps wherever
every part has a mapping. Each reports every missing, unexpected and mis-shaped tensor together.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tfgraph.registry import ConfigError

SUFFIXES = ("weight", "bias")  # the parameters a piece may have


@dataclass(frozen=True)
class HF:
    """One tensor group of a Hugging Face checkpoint that holds pieces of a tfgraph block.

    Attributes:
        path: the module's path under the location's prefix (``""``: the prefix itself); its ``.weight`` and
            ``.bias`` are read.
        pieces: the block's pieces it holds, stacked along the output dimension in this order; ``()``: the block's
            one piece (a norm's, an embedding's).
        conv1d: the weight is stored ``[in, out]`` (GPT-2's ``Conv1D``) rather than ``nn.Linear``'s ``[out, in]``.
        per_head: the pieces are interleaved per head, ``[n_heads, len(pieces), head_dim]`` along the output
            dimension (GPT-NeoX's ``query_key_value``), rather than one after the other.
        skip_rows: rows stored before the block's first (BART keeps two unused rows before position 0).
        bias_key: the bias is this key (from the checkpoint's root) instead, stored as one row ``[1, n]`` (BART's
            ``final_logits_bias``).
    """

    path: str = ""
    pieces: tuple[str, ...] = ()
    conv1d: bool = False
    per_head: bool = False
    skip_rows: int = 0
    bias_key: str | None = None

    def key(self, prefix: str, suffix: str) -> str:
        """The checkpoint key of this group's ``weight`` or ``bias`` under ``prefix``."""
        if suffix == "bias" and self.bias_key is not None:
            return self.bias_key
        return _join(prefix, self.path, suffix)


def hf_tensors(spec: Any) -> tuple[HF, ...]:
    """A location's spec as :class:`HF` entries: a path (the block's one piece), an :class:`HF`, a mapping of piece
    to path (one tensor group per piece, Llama's ``q_proj``...), or a tuple of :class:`HF`."""
    if isinstance(spec, str):
        return (HF(spec),)
    if isinstance(spec, HF):
        return (spec,)
    if isinstance(spec, Mapping):
        return tuple(HF(path, (piece,)) for piece, path in spec.items())
    return tuple(spec)


@dataclass(frozen=True)
class Layers:
    """Where a stack's layers live in the checkpoint: ``prefix`` with ``{i}`` for the layer's index, and per node of
    the layer graph (``attn``, ``norm1``, ...) its HF tensors under that prefix (or a function of the node's block
    that returns them, where the place depends on the block: T5's gated and plain FFNs)."""

    prefix: str
    nodes: Mapping[str, Any]


@dataclass(frozen=True)
class Location:
    """A module of the tfgraph model with parameters, and where the checkpoint keeps them."""

    path: str  # in the tfgraph model (``decoder.layers.3.attn``)
    module: nn.Module
    prefix: str  # in the checkpoint (``model.layers.3.self_attn``)
    tensors: tuple[HF, ...]
    skip: frozenset[str] = frozenset()  # the block's parameters that are another's (a tied head's weight)


@dataclass
class Report:
    """What did not fit, every problem together."""

    missing: list[str] = field(default_factory=list)  # ours that the checkpoint lacks (with the key looked for)
    unexpected: list[str] = field(default_factory=list)  # the checkpoint's that nothing of ours takes
    misshaped: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)  # our modules or pieces that the family has no place for

    def raise_if_any(self, key: str, what: str) -> None:
        lines = []
        for title, items in (
            ("no mapping", self.unmapped),
            ("missing", self.missing),
            ("mis-shaped", self.misshaped),
            ("unexpected", self.unexpected),
        ):
            if items:
                shown = items[:12] + ([f"... {len(items) - 12} more"] if len(items) > 12 else [])
                lines.append(f"{title} ({len(items)}): " + "; ".join(shown))
        if lines:
            raise ConfigError([(key, f"{what}: {line}") for line in lines])


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def layout(module: nn.Module) -> Mapping[str, str | tuple[str, ...]] | None:
    """A block's ``hf_layout``: its own parameter stems -> the pieces each stacks (``None``: it declares none)."""
    return getattr(type(module), "hf_layout", None)


def _own_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=True))


def locations(
    model: nn.Module, outer: Mapping[str, Any], stacks: Mapping[str, Layers], report: Report
) -> list[Location]:
    """The model's modules with parameters, each with its HF tensors; what has none is recorded as unmapped.

    ``outer`` maps the model's parts outside the layers (``embedding``, ``decoder.final_norm``, ...) to their specs
    (HF paths from the checkpoint's root); ``stacks`` maps ``encoder``/``decoder`` to its :class:`Layers`.
    """
    found: list[Location] = []
    covered: set[str] = set()
    for path, spec in outer.items():
        module = _submodule(model, path)
        if module is None:
            continue
        skip = frozenset({"weight"}) if _tied_head(model, path) else frozenset()
        found.append(Location(path, module, "", hf_tensors(spec), skip))
        covered.add(path)
    for stack_name, layers in stacks.items():
        stack = getattr(model, stack_name, None)
        if stack is None:
            continue
        for i, layer in enumerate(stack.layers):
            for node, block in layer.named_children():
                path = f"{stack_name}.layers.{i}.{node}"
                if not _own_parameters(block):
                    continue
                covered.add(path)
                if node not in layers.nodes:
                    report.unmapped.append(f"{path} ({type(block).__name__}): the family keeps no node {node!r}")
                    continue
                spec = layers.nodes[node]
                spec = spec(block) if callable(spec) else spec
                found.append(Location(path, block, layers.prefix.format(i=i), hf_tensors(spec)))
    for name, _ in model.named_parameters():
        if not any(name == c or name.startswith(c + ".") for c in covered):
            report.unmapped.append(f"{name}: the family has no place for it")
    for where in found:
        stems = layout(where.module)
        if stems is None:
            report.unmapped.append(
                f"{where.path}: {type(where.module).__name__} declares no Hugging Face layout (hf_layout)"
            )
            continue
        for name, _ in where.module.named_parameters():
            if not any(name == _join(stem, suffix) for stem in stems for suffix in SUFFIXES):
                report.unmapped.append(
                    f"{where.path}.{name}: not in {type(where.module).__name__}'s hf_layout ({', '.join(stems)})"
                )
    return [where for where in found if layout(where.module) is not None]


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    return module if module is not None and _own_parameters(module) else None


def _tied_head(model: nn.Module, path: str) -> bool:
    """The head whose weight is the embedding's (HF ties it itself on loading)."""
    return path == "head" and getattr(model, "tie_embeddings", False) and getattr(model, "head", None) is not None


def _stems(loc: Location) -> Iterator[tuple[str, str, tuple[str, ...], Tensor]]:
    """``(our parameter name in the block, suffix, its pieces, the parameter)`` for each of its parameters."""
    params = dict(loc.module.named_parameters(remove_duplicate=False))
    for stem, pieces in layout(loc.module).items():
        pieces = (pieces,) if isinstance(pieces, str) else tuple(pieces)
        for suffix in SUFFIXES:
            name = _join(stem, suffix)
            if name in params and name not in loc.skip:
                yield name, suffix, pieces, params[name]


def _piece_sizes(module: nn.Module, pieces: tuple[str, ...], total: int) -> list[int]:
    """The rows of each piece in a stacked tensor of ``total`` rows: queries ``n_heads * head_dim``, keys and values
    ``n_kv_heads * head_dim``, otherwise equal shares."""
    if len(pieces) == 1:
        return [total]
    head_dim = getattr(module, "head_dim", None)
    sizes = {}
    if head_dim is not None:
        sizes = {"q": module.n_heads * head_dim, "k": module.n_kv_heads * head_dim, "v": module.n_kv_heads * head_dim}
    if all(p in sizes for p in pieces) and sum(sizes[p] for p in pieces) == total:
        return [sizes[p] for p in pieces]
    return [total // len(pieces)] * len(pieces)


def _split(module: nn.Module, t: Tensor, entry: HF, names: tuple[str, ...]) -> dict[str, Tensor]:
    if entry.per_head:
        heads = module.n_heads
        grouped = t.reshape(heads, len(names), -1, *t.shape[1:])
        return {name: grouped[:, j].reshape(-1, *t.shape[1:]) for j, name in enumerate(names)}
    return dict(zip(names, t.split(_piece_sizes(module, names, t.shape[0])), strict=True))


def _stack(module: nn.Module, parts: list[Tensor], entry: HF) -> Tensor:
    if entry.per_head:
        heads = module.n_heads
        grouped = torch.stack([p.reshape(heads, -1, *p.shape[1:]) for p in parts], dim=1)
        return grouped.reshape(-1, *parts[0].shape[1:])
    return torch.cat(parts)


def _names(entry: HF, module: nn.Module) -> tuple[str, ...]:
    """The pieces an entry holds: its own list, or the block's one piece (a norm's ``norm``)."""
    if entry.pieces:
        return entry.pieces
    pieces = {p for value in layout(module).values() for p in ((value,) if isinstance(value, str) else value)}
    if len(pieces) != 1:
        raise ValueError(
            f"{entry.path!r} names no pieces, but {type(module).__name__} has several ({', '.join(sorted(pieces))}): "
            "a family must say which it holds"
        )
    return tuple(pieces)


Reader = Callable[[str], Tensor]


def import_state(
    model: nn.Module,
    where: list[Location],
    keys: set[str],
    read: Reader,
    report: Report,
    sink: Callable[[str, Tensor], None] | None = None,
) -> dict[str, Tensor]:
    """Our state (full parameter names -> tensors) from the checkpoint's ``keys``, read one at a time by ``read``.

    With ``sink``, each tensor is handed to it as soon as it is made (and none is kept): the state is never in
    memory twice. ``read`` may return tensors on the ``meta`` device, to find every problem without reading a byte.
    """
    state: dict[str, Tensor] = {}
    used: set[str] = set()
    for loc in where:
        for suffix in SUFFIXES:
            pieces: dict[str, Tensor] = {}
            looked: dict[str, str] = {}  # piece -> the key it is looked for in
            for entry in loc.tensors:
                key = entry.key(loc.prefix, suffix)
                names = _names(entry, loc.module)
                for name in names:
                    looked[name] = key
                if key not in keys:
                    continue
                used.add(key)
                t = read(key)
                if entry.bias_key is not None and suffix == "bias":
                    t = t.reshape(-1)
                if entry.conv1d and suffix == "weight":
                    t = t.t()
                if entry.skip_rows:
                    t = t[entry.skip_rows :]
                try:
                    pieces.update(_split(loc.module, t, entry, names))
                except RuntimeError:
                    report.misshaped.append(f"{key} {list(t.shape)} does not split into {', '.join(names)}")
            for name, own_suffix, wanted, param in _stems(loc):
                if own_suffix != suffix:
                    continue
                ours = _join(loc.path, name)
                absent = [looked.get(p, f"(piece {p!r})") for p in wanted if p not in pieces]
                if absent:
                    report.missing.append(f"{ours} (looked for {', '.join(dict.fromkeys(absent))})")
                    continue
                value = torch.cat([pieces[p] for p in wanted]) if len(wanted) > 1 else pieces[wanted[0]]
                if tuple(value.shape) != tuple(param.shape):
                    sources = ", ".join(dict.fromkeys(looked[p] for p in wanted))
                    report.misshaped.append(f"{ours} is {list(param.shape)}, {sources} gives {list(value.shape)}")
                    continue
                if sink is None:
                    state[ours] = value
                else:
                    sink(ours, value)
    report.unexpected.extend(sorted(keys - used))
    return state


def export_state(where: list[Location], report: Report) -> dict[str, Tensor]:
    """The checkpoint's tensors (HF key -> tensor, contiguous and owning its memory) from our modules."""
    out: dict[str, Tensor] = {}
    for loc in where:
        for suffix in SUFFIXES:
            pieces: dict[str, Tensor] = {}
            for _name, own_suffix, wanted, param in _stems(loc):
                if own_suffix == suffix:
                    value = param.detach()
                    sizes = _piece_sizes(loc.module, wanted, value.shape[0])
                    pieces.update(zip(wanted, value.split(sizes), strict=True))
            taken: set[str] = set()
            for entry in loc.tensors:
                names = _names(entry, loc.module)
                present = [n for n in names if n in pieces]
                if not present:
                    continue
                key = entry.key(loc.prefix, suffix)
                if len(present) < len(names):
                    report.unmapped.append(
                        f"{loc.path}: {key} needs {', '.join(names)}, the block has {', '.join(present)}"
                    )
                    continue
                t = _stack(loc.module, [pieces[n] for n in names], entry)
                if entry.skip_rows:
                    t = torch.cat([t.new_zeros(entry.skip_rows, *t.shape[1:]), t])
                if entry.conv1d and suffix == "weight":
                    t = t.t()
                if entry.bias_key is not None and suffix == "bias":
                    t = t.reshape(1, -1)
                out[key] = t.contiguous().clone()
                taken.update(names)
            for name in pieces.keys() - taken:
                report.unmapped.append(f"{loc.path}: its piece {name!r} ({suffix}) has no place in the checkpoint")
    return out


def matching(patterns: tuple[str, ...], keys: set[str]) -> set[str]:
    """The keys that match one of the regular expressions ``patterns`` (whole key)."""
    compiled = [re.compile(p) for p in patterns]
    return {key for key in keys if any(c.fullmatch(key) for c in compiled)}


__all__ = ["HF", "Layers", "Location", "Report", "export_state", "hf_tensors", "import_state", "locations"]
