"""Layer graphs: a spec of named nodes with inputs, checked, then run as a DAG in a fixed order.

A node either fills a **slot** (``norm``, ``attention``, ``cross_attention``, ``ffn``: the model's part of
that name, so swapping ``model/norm`` swaps every norm node) or names a **block** directly (an ``op`` by
default, any kind with ``kind:``). Any other key of a node is an argument of its block::

    nodes:
      norm1: {slot: norm, in: x}
      attn:  {slot: attention, in: norm1}
      res1:  {block: add, in: [x, attn]}
      scaled: {block: scale, in: res1, value: 0.5}

:func:`parse_graph` checks names, inputs, cycles, unused nodes, the output and each node's number of inputs,
recording every problem with its config path; a model part a slot refers to is a :class:`Part`.
:class:`LayerGraph` runs the nodes in topological order with the argument plumbing fixed at build time (from each
block's :class:`~tfgraph.registry.BlockProtocol`), calling each through :func:`call_node`, as the dry run of
:mod:`tfgraph.models.build` does.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from tfgraph.blocks.context import AttentionContext
from tfgraph.registry import KINDS, BlockProtocol, Problems, bind, block_protocol, lookup, suggest

SLOTS = ("norm", "attention", "cross_attention", "ffn")
NODE_KEYS = ("slot", "block", "kind", "in")
# The kinds whose blocks map a layer's tensors to tensors; position, embedding and head blocks are model parts
# (model.position, model.embedding, model.head) that the stack and the model call, never graph nodes.
NODE_KINDS = ("attention", "ffn", "norm", "op")


@dataclass(frozen=True)
class Part:
    """A model part (``model.attention``, ``model.position``, a pattern entry's ``norm``): its block class, its
    own config, where that config lives and, once bound, every argument it is built with.

    ``key_paths`` gives the config path of keys that come from elsewhere (a pattern entry keeps the arguments of
    the part it overrides); every other key lives at ``path.key``. ``kwargs`` is ``None`` until the part is bound
    (:meth:`bound`); a slot's part is bound per node instead, since a node may add its own keys.
    """

    cls: type
    config: Mapping[str, Any]
    path: str
    key_paths: Mapping[str, str] = field(default_factory=dict)
    kwargs: Mapping[str, Any] | None = None

    def bound(self, context: Mapping[str, Any], problems: Problems) -> Part:
        """This part with its arguments bound strictly (:func:`~tfgraph.registry.bind`) against ``context``."""
        kwargs = bind(self.cls, self.config, context=context, path=self.path, problems=problems)
        return replace(self, kwargs=kwargs)

    def build(self) -> Any:
        """A fresh block from the bound arguments."""
        if self.kwargs is None:
            raise ValueError(f"{self.path}: the part is not bound yet (Part.bound)")
        return self.cls(**self.kwargs)


@dataclass(frozen=True)
class NodeSpec:
    """One node of a layer graph, ready to build."""

    name: str
    cls: type
    kwargs: dict[str, Any]
    inputs: tuple[str, ...]
    path: str
    source: str  # config path of the block's arguments (the model part for a slot node)


@dataclass(frozen=True, eq=False)
class GraphSpec:
    """A checked layer graph: nodes in topological order, the layer's inputs and its output node.

    Compared by identity: the layers of a stack that share a spec are the same object.
    """

    inputs: tuple[str, ...]
    nodes: tuple[NodeSpec, ...]
    output: str
    path: str = ""


def block_arity(cls: type) -> tuple[int, int | None]:
    """How many tensor inputs a block's ``forward`` takes: ``(min, max)``, ``max`` None for ``*inputs``."""
    params = [p for name, p in inspect.signature(cls.forward).parameters.items() if name != "self"]
    params = params[: len(params) - block_protocol(cls).plumbed]  # the attention context and the cache, last
    variadic = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    fixed = [p for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    required = sum(p.default is inspect.Parameter.empty for p in fixed)
    return (max(1, required), None) if variadic else (required, len(fixed))


def parse_graph(
    nodes: Any,
    *,
    inputs: tuple[str, ...],
    output: Any,
    parts: Mapping[str, Part | None],
    context: Mapping[str, Any],
    path: str,
    problems: Problems,
) -> GraphSpec | None:
    """Check a layer graph's config and resolve its nodes.

    Args:
        nodes: the mapping of node name to node config (``model.layer.nodes``).
        inputs: the layer's own inputs (``("x",)``, or ``("x", "memory")`` for a cross-attending decoder).
        output: the name of the node whose value the layer returns.
        parts: the model parts that slots refer to (``None`` for a part whose own config is wrong).
        context: model-level sizes handed to blocks by parameter name.
        path: config path of ``nodes``, for messages.
        problems: where mistakes are recorded.

    Returns:
        The graph spec, or ``None`` when a problem makes it unbuildable.
    """
    before = problems.mark()
    if not isinstance(nodes, Mapping) or not nodes:
        problems.add(path, f"expected a mapping of node name to node config, got {nodes!r}")
        return None
    specs: dict[str, NodeSpec] = {}
    for name, node in nodes.items():
        spec = _parse_node(str(name), node, inputs, parts, context, f"{path}.{name}", problems)
        if spec is not None:
            specs[spec.name] = spec

    known = set(nodes) | set(inputs)
    for spec in specs.values():
        for source in spec.inputs:
            if source not in known:
                problems.add(
                    f"{spec.path}.in",
                    f"unknown input {source!r}{suggest(source, known)}; a node reads other nodes "
                    f"({', '.join(map(str, nodes))}) or the layer's inputs ({', '.join(inputs)})",
                )
    out_parent = path.rsplit(".", 1)[0]
    if not isinstance(output, str):
        problems.add(f"{out_parent}.output", f"expected the name of the node the layer returns, got {output!r}")
    elif output not in nodes:
        problems.add(
            f"{out_parent}.output",
            f"no output: the layer returns node {output!r}, which does not exist{suggest(str(output), map(str, nodes))}; "
            f"nodes are {', '.join(map(str, nodes))}",
        )
    if problems.since(before) or len(specs) < len(nodes):
        return None

    order = _topological_order(specs, inputs, path, problems)
    if order is None:
        return None
    used = _reachable(specs, output)
    for name in order:
        if name not in used:
            problems.add(f"{path}.{name}", f"node {name!r} is unused: nothing on the way to output {output!r} reads it")
    for layer_input in inputs:
        if layer_input not in used and layer_input != "x":
            problems.add(
                path, f"the layer input {layer_input!r} is never read (a decoder layer must cross-attend to it)"
            )
    if problems.since(before):
        return None
    return GraphSpec(inputs=inputs, nodes=tuple(specs[name] for name in order), output=str(output), path=path)


def _parse_node(
    name: str,
    node: Any,
    inputs: tuple[str, ...],
    parts: Mapping[str, Part | None],
    context: Mapping[str, Any],
    path: str,
    problems: Problems,
) -> NodeSpec | None:
    """One node: its name and inputs, its block (a slot's part or a named block) bound, its number of inputs."""
    sources = _node_inputs(name, node, inputs, path, problems)
    if sources is None:
        return None
    extra = {k: v for k, v in node.items() if k not in NODE_KEYS}  # the node's own arguments of its block
    if ("slot" in node) == ("block" in node):
        problems.add(path, "a node names exactly one of `slot` (a model part) or `block` (a registered block)")
        return None
    if "slot" in node:
        resolved = _slot_block(node, extra, parts, context, path, problems)
    else:
        resolved = _named_block(node, extra, context, path, problems)
    if resolved is None:
        return None
    cls, kwargs, source = resolved
    low, high = block_arity(cls)
    if len(sources) < low or (high is not None and len(sources) > high):
        want = f"{low}" if low == high else (f"at least {low}" if high is None else f"{low} to {high}")
        problems.add(
            f"{path}.in", f"{cls.__name__} takes {want} input(s), the node gives {len(sources)}: {list(sources)}"
        )
    return NodeSpec(name=name, cls=cls, kwargs=kwargs, inputs=sources, path=path, source=source)


def _node_inputs(
    name: str, node: Any, inputs: tuple[str, ...], path: str, problems: Problems
) -> tuple[str, ...] | None:
    """The names a node reads (its ``in``), after checking its name and that it is a mapping."""
    if not name.isidentifier() or hasattr(nn.Module, name) or name in inputs:
        problems.add(
            path, f"node name {name!r} must be a Python identifier, not an nn.Module attribute nor a layer input"
        )
        return None
    if not isinstance(node, Mapping):
        problems.add(path, f"expected a node config like {{slot: norm, in: x}}, got {node!r}")
        return None
    raw_in = node.get("in")
    if raw_in is None:
        problems.add(f"{path}.in", "every node needs `in`: the node or layer input(s) it reads")
        return None
    sources = (raw_in,) if isinstance(raw_in, str) else tuple(raw_in) if isinstance(raw_in, (list, tuple)) else None
    if sources is None or not all(isinstance(source, str) for source in sources):
        problems.add(f"{path}.in", f"expected the name of a node or layer input, or a list of names, got {raw_in!r}")
        return None
    return sources


def _slot_block(
    node: Mapping[str, Any],
    extra: Mapping[str, Any],
    parts: Mapping[str, Part | None],
    context: Mapping[str, Any],
    path: str,
    problems: Problems,
) -> tuple[type, dict[str, Any], str] | None:
    """A slot node's block: the model part's class, its config and the node's own keys bound, and the part's path."""
    slot = node["slot"]
    if slot not in SLOTS:
        problems.add(f"{path}.slot", f"unknown slot {slot!r}{suggest(slot, SLOTS)}; slots are {', '.join(SLOTS)}")
        return None
    if "kind" in node:
        problems.add(f"{path}.kind", "`kind` goes with `block`, not with `slot` (a slot's kind is fixed)")
    if slot not in parts:
        problems.add(f"{path}.slot", f"this model has no {slot!r} part (model.{slot} is missing)")
        return None
    part = parts[slot]
    if part is None:  # the part itself is wrong, and that problem is already recorded
        return None
    if not _has_forward(part.cls, f"{part.path}.block", problems):
        return None
    given = {**part.config, **extra}
    key_paths = {k: part.key_paths.get(k, f"{part.path}.{k}") for k in part.config} | {k: f"{path}.{k}" for k in extra}
    kwargs = bind(part.cls, given, context=context, path=part.path, problems=problems, key_paths=key_paths)
    return part.cls, kwargs, part.path


def _named_block(
    node: Mapping[str, Any], extra: Mapping[str, Any], context: Mapping[str, Any], path: str, problems: Problems
) -> tuple[type, dict[str, Any], str] | None:
    """A ``block:`` node's block: the registered class of its kind (``op`` by default), its keys bound, its path."""
    kind = node.get("kind", "op")
    if kind not in NODE_KINDS:
        problems.add(
            f"{path}.kind",
            (
                f"a {kind} block cannot be a graph node: it is a model part (model.{kind}), used by the stack or "
                "the model, not by a layer"
                if kind in KINDS
                else f"unknown block kind {kind!r}{suggest(kind, NODE_KINDS)}"
            )
            + f"; a node's kind is one of {', '.join(NODE_KINDS)}",
        )
        return None
    cls = lookup(kind, node["block"], f"{path}.block", problems)
    if cls is None or not _has_forward(cls, f"{path}.block", problems):
        return None
    return cls, bind(cls, extra, context=context, path=path, problems=problems), path


def _has_forward(cls: type, path: str, problems: Problems) -> bool:
    """Whether a node's block computes something (a plugin may register one without ``forward``)."""
    if cls.forward is nn.Module.forward:
        problems.add(path, f"{cls.__name__} defines no forward(), so it cannot be a node of a layer graph")
        return False
    return True


def _topological_order(
    specs: Mapping[str, NodeSpec], inputs: tuple[str, ...], path: str, problems: Problems
) -> list[str] | None:
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, trail: list[str]) -> bool:
        if state.get(name) == 2 or name in inputs:
            return True
        if state.get(name) == 1:
            cycle = (trail[trail.index(name) :] + [name])[::-1]  # in the direction values flow
            problems.add(f"{path}.{name}", f"cycle: {' -> '.join(cycle)}")
            return False
        state[name] = 1
        for source in specs[name].inputs:
            if not visit(source, trail + [name]):
                return False
        state[name] = 2
        order.append(name)
        return True

    for name in specs:  # config order, so that a graph written in order runs in order
        if not visit(name, []):
            return None
    return order


def _reachable(specs: Mapping[str, NodeSpec], output: str) -> set[str]:
    seen: set[str] = set()
    stack = [output]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(specs[name].inputs if name in specs else ())
    return seen


def call_node(
    block: nn.Module, args: list[Tensor | None], takes_context: bool, ctx: AttentionContext, entry: Any = None
) -> Tensor:
    """Call a node's block the one way every caller does: its inputs, then the context if it takes it, then its
    cache entry if one is given (while generating)."""
    if not takes_context:
        return block(*args)
    return block(*args, ctx) if entry is None else block(*args, ctx, entry)


def attention_windows(blocks: Iterable[tuple[nn.Module, BlockProtocol]]) -> tuple[int | None, ...]:
    """The sliding windows (``None`` = global) that the context-taking blocks of ``(block, protocol)`` pairs use,
    each once, in order: the masks a stack builds for them (empty when there is no such block)."""
    return tuple(dict.fromkeys(protocol.window(block) for block, protocol in blocks if protocol.context))


class LayerGraph(nn.Module):
    """One layer: the blocks of a :class:`GraphSpec`, run in topological order.

    Each node's block is a child module under the node's name (``layers.0.attn.qkv.weight``). The plan
    (which values feed which node, which nodes take the attention context and which their cache, read from each
    block's :class:`~tfgraph.registry.BlockProtocol`) is fixed at build time, so ``forward`` is a flat loop that
    ``torch.compile(fullgraph=True)`` unrolls.

    A block that declares ``needs = ("context", "cache")`` makes its cache with ``new_cache(batch, max_len, *,
    dtype, device)``; :meth:`new_cache` collects them, and a forward given that list hands each block its own
    after the context.

    forward(x: [B, T, d_model], ctx, memory: [B, S, d_model] | None, cache: list | None) -> [B, T, d_model]

    """

    def __init__(self, spec: GraphSpec) -> None:
        super().__init__()
        self.spec = spec
        slots = {name: i for i, name in enumerate(spec.inputs)}
        plan, cached, built = [], [], []
        for node in spec.nodes:
            block = node.cls(**node.kwargs)
            self.add_module(node.name, block)
            protocol = block_protocol(node.cls)
            slot = None
            if protocol.cache:
                slot = len(cached)
                cached.append(block)
            plan.append((block, tuple(slots[source] for source in node.inputs), protocol.context, slot))
            built.append((block, protocol))
            slots[node.name] = len(slots)
        self._plan = tuple(plan)  # (block, input slots, takes the context, index of its cache or None)
        self._cached_blocks = tuple(cached)
        self._output = slots[spec.output]
        self._built = tuple(built)

    def windows(self) -> tuple[int | None, ...]:
        """The sliding windows its attention blocks use (see :func:`attention_windows`)."""
        return attention_windows(self._built)

    def uncacheable(self) -> list[str]:
        """Names of the nodes that take the context but keep no cache (they cannot continue from a cache)."""
        return [
            node.name
            for node, (_, _, takes_context, slot) in zip(self.spec.nodes, self._plan, strict=True)
            if takes_context and slot is None
        ]

    def new_cache(self, batch: int, max_len: int, *, dtype: torch.dtype, device: torch.device | str) -> list[Any]:
        """The empty caches of this layer's blocks that keep one, in node order."""
        return [block.new_cache(batch, max_len, dtype=dtype, device=device) for block in self._cached_blocks]

    def forward(
        self, x: Tensor, ctx: AttentionContext, memory: Tensor | None = None, cache: list[Any] | None = None
    ) -> Tensor:
        values = [x, memory] if len(self.spec.inputs) == 2 else [x]
        for block, sources, takes_context, slot in self._plan:
            entry = None if cache is None or slot is None else cache[slot]
            values.append(call_node(block, [values[i] for i in sources], takes_context, ctx, entry))
        return values[self._output]
