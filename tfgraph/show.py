"""What ``tfgraph-show`` prints: a model as a tree with parameters and FLOPs per node, or as a Graphviz picture.

The model is built on the ``meta`` device, so a full-size config costs no memory; its parameters and FLOPs are
counted by :mod:`tfgraph.flops`, and this module only lays them out, as text or as a picture.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import graphviz
from omegaconf import DictConfig
from torch import nn

from tfgraph.flops import FLOPS_NOTE, FlopCount, count_flops, meta_model
from tfgraph.graph import GraphSpec, LayerGraph, NodeSpec
from tfgraph.models import Stack, Transformer
from tfgraph.registry import ConfigError, load_plugins, suggest
from tfgraph.spec import SIZE_KEYS

FORMATS = ("text", "dot", "svg", "png")
KIND_COLORS = {
    "attention": "#cfe2f3",
    "ffn": "#fce5cd",
    "norm": "#d9ead3",
    "op": "#f3f3f3",
    "position": "#ead1dc",
    "embedding": "#fff2cc",
    "head": "#fff2cc",
}


class GraphvizMissing(RuntimeError):
    """The Graphviz ``dot`` program, needed to render svg or png, is not installed."""

    def __init__(self, fmt: str) -> None:
        super().__init__(
            f"cannot render format={fmt}: the Graphviz `dot` program is not installed (or not on PATH).\n"
            "Install Graphviz with one of:\n"
            "  apt-get install graphviz    (Debian, Ubuntu)\n"
            "  brew install graphviz       (macOS)\n"
            "  conda install graphviz      (conda)\n"
            "format=dot writes the DOT source without it."
        )


# ------------------------------------------------------------------------------------------------ entry


def show(cfg: DictConfig, *, name: str | None = None) -> str:
    """Describe the model of a composed ``show`` config.

    Args:
        cfg: the composed ``show`` config (``model``, ``format``, ``out``, ``seq_len``, ``plugins``).
        name: the model's name for titles and the default output file (the ``model=`` choice).

    Returns:
        For ``format=text``, the tree and its summary (with the line ``params: N``); for the picture formats,
        a line saying where the file was written, then ``params: N``.

    Raises:
        tfgraph.ConfigError: for any config mistake.
        GraphvizMissing: when ``format`` is svg or png and Graphviz is not installed.
    """
    fmt, out, seq_len = _options(cfg)
    if fmt in ("svg", "png") and shutil.which("dot") is None:
        raise GraphvizMissing(fmt)  # before the work, not after
    load_plugins(cfg.get("plugins"), "plugins")
    model = meta_model(cfg.model)
    flops = count_flops(model, cfg.model, seq_len)
    if fmt == "text":
        return render_text(model, flops, name)
    graph = to_graphviz(model, flops, name)
    path = Path(out if out is not None else f"{name or model.topology}.{fmt}")
    if fmt == "dot":
        path.write_text(graph.source, encoding="utf-8")
    else:
        path.write_bytes(render(graph, fmt))
    return f"wrote {path}\nparams: {model.num_parameters()}"


def _options(cfg: DictConfig) -> tuple[str, str | None, int | None]:
    problems = []
    fmt = cfg.get("format", "text")
    if fmt not in FORMATS:
        problems.append(("format", f"expected one of {', '.join(FORMATS)}, got {fmt!r}{suggest(str(fmt), FORMATS)}"))
    out = cfg.get("out")
    if out is not None and not isinstance(out, str):
        problems.append(("out", f"expected a file path, got {out!r}"))
    seq_len = cfg.get("seq_len")
    max_len = cfg.model.get("max_len") if isinstance(cfg.get("model"), DictConfig) else None
    if seq_len is not None:
        if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
            problems.append(("seq_len", f"expected a positive integer or null, got {seq_len!r}"))
        elif isinstance(max_len, int) and seq_len > max_len:
            problems.append(("seq_len", f"{seq_len} is longer than model.max_len ({max_len})"))
    if problems:
        raise ConfigError(problems)
    return fmt, out, seq_len


# ------------------------------------------------------------------------------------------------ the tree


@dataclass
class Item:
    """One row of the tree: a label, the parameters it adds and its FLOPs per token."""

    label: str
    params: int | None = None
    flops: float | None = None
    children: list[Item] = field(default_factory=list)


class _Owned:
    """Counts each parameter tensor once, in the order the tree shows the modules (tied weights once)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def __call__(self, module: nn.Module | None) -> int:
        if module is None:
            return 0
        total = 0
        for p in module.parameters():
            if p.requires_grad and id(p) not in self.seen:
                self.seen.add(id(p))
                total += p.numel()
        return total


def _block(module: nn.Module, kwargs: dict[str, Any] | None = None) -> str:
    """``registered name (kind; own arguments)`` of a block, its class name when it is not a registered block.

    Model-level sizes are left out: they are the same for every block and printed once below the tree.
    """
    cls = type(module)
    name = getattr(cls, "block_name", None)
    if not name:
        return cls.__name__
    own = ", ".join(f"{k}={v}" for k, v in (kwargs or {}).items() if k not in SIZE_KEYS)
    return f"{name} ({cls.block_kind}{'; ' + own if own else ''})"


def _kwargs(model: Transformer, part: str) -> dict[str, Any] | None:
    """The bound arguments of a model-level part (``position``, ``head``, ...), from the model's spec."""
    block = getattr(getattr(model, "spec", None), part, None)
    return getattr(block, "kwargs", None)


def _tied(model: Transformer) -> bool:
    head_w = getattr(model.head, "weight", None)
    return head_w is not None and head_w is getattr(model.embedding, "weight", None)


def _stacks(model: Transformer) -> list[tuple[str, Stack]]:
    return [
        (name, getattr(model, name)) for name in ("encoder", "decoder") if isinstance(getattr(model, name, None), Stack)
    ]


def _runs(layers: Sequence[LayerGraph]) -> list[tuple[int, int]]:
    """Consecutive layers sharing one GraphSpec: ``(first, last)`` index pairs."""
    runs: list[tuple[int, int]] = []
    for i, layer in enumerate(layers):
        if runs and layers[runs[-1][0]].spec is layer.spec:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _layers_label(indices: Sequence[int]) -> str:
    """``layer 3``, ``layers 0-11 (x12)``, ``layers 0-3, 8, 10 (x6)``."""
    if len(indices) == 1:
        return f"layer {indices[0]}"
    spans: list[list[int]] = []
    for i in indices:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    text = ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans)
    return f"layers {text} (x{len(indices)})"


class _TreeBuilder:
    """Builds the :class:`Item` rows; each parameter tensor is counted at the first row that shows it."""

    def __init__(self, flops: FlopCount) -> None:
        self.flops = flops
        self.owned = _Owned()

    def module(self, label: str, module: nn.Module, module_name: str, kwargs: dict[str, Any] | None = None) -> Item:
        return Item(f"{label}: {_block(module, kwargs)}", self.owned(module), self.flops.per_token(module_name))

    def model(self, model: Transformer, name: str | None) -> Item:
        root = Item(f"{name or 'model'}: {model.topology}", model.num_parameters(), self.flops.per_token(""))
        stacks = _stacks(model)
        embedding = self.module("embedding", model.embedding, "embedding", _kwargs(model, "embedding"))
        if len(stacks) > 1:
            embedding.label += f", shared by {' and '.join(n for n, _ in stacks)}"
        root.children.append(embedding)
        if model.token_type is not None:
            root.children.append(
                self.module("token_type", model.token_type, "token_type", _kwargs(model, "token_type"))
            )
        root.children += [self.stack(model, stack_name, stack) for stack_name, stack in stacks]
        if model.head is not None:
            head = self.module("head", model.head, "head", _kwargs(model, "head"))
            if _tied(model):
                head.label += ", tied to embedding"
            root.children.append(head)
        return root

    def stack(self, model: Transformer, name: str, stack: Stack) -> Item:
        n = len(stack.layers)
        what = "causal" if stack.causal else "bidirectional"
        if n and "memory" in stack.layers[0].spec.inputs:
            what += ", cross-attends to the encoder"
        params = sum(p.numel() for p in stack.parameters() if p.requires_grad)
        item = Item(f"{name}: {n} layer{'s' * (n != 1)}, {what}", params, self.flops.per_token(name))
        item.children.append(self.module("position", stack.position, f"{name}.position", _kwargs(model, "position")))
        if stack.embed_norm is not None:
            item.children.append(
                self.module("embed_norm", stack.embed_norm, f"{name}.embed_norm", _kwargs(model, "embed_norm"))
            )
        shown: dict[GraphSpec, int] = {}  # each graph's nodes are listed once, under its first run
        for first, last in _runs(stack.layers):
            layer = stack.layers[first]
            prefix = f"{name}.layers.{first}"
            nodes = [self.node(layer, node, prefix) for node in layer.spec.nodes]
            for other in stack.layers[first + 1 : last + 1]:
                self.owned(other)  # the same parameter counts again, per layer
            label = _layers_label(range(first, last + 1)) + (", each" if last > first else "")
            row = Item(label, sum(node.params for node in nodes), self.flops.per_token(prefix))
            if layer.spec in shown:
                row.label += f": the graph of layer {shown[layer.spec]}"
            else:
                shown[layer.spec] = first
                row.children = nodes
            item.children.append(row)
        if stack.final_norm is not None:
            item.children.append(
                self.module("final_norm", stack.final_norm, f"{name}.final_norm", _kwargs(model, "final_norm"))
            )
        return item

    def node(self, layer: LayerGraph, node: NodeSpec, prefix: str) -> Item:
        item = self.module(node.name, getattr(layer, node.name), f"{prefix}.{node.name}", node.kwargs)
        item.label += f" <- {', '.join(node.inputs)}" + ("  [output]" if node.name == layer.spec.output else "")
        return item


def model_tree(model: Transformer, flops: FlopCount, name: str | None = None) -> Item:
    """The model as a tree of :class:`Item` rows; each parameter tensor is counted at its first row."""
    return _TreeBuilder(flops).model(model, name)


def _num(value: float | None) -> str:
    if value is None:
        return ""
    if value == 0:
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _lines(item: Item, lead: str = "", branch: str = "") -> Iterator[tuple[str, Item]]:
    yield lead + branch + item.label, item
    below = lead + ("" if not branch else ("    " if branch.startswith("└") else "│   "))
    for i, child in enumerate(item.children):
        yield from _lines(child, below, "└── " if i == len(item.children) - 1 else "├── ")


def render_text(model: Transformer, flops: FlopCount, name: str | None = None) -> str:
    """The tree with aligned params and FLOPs/token columns, then the summary (``params: N`` among it)."""
    rows = list(_lines(model_tree(model, flops, name)))
    width = max(len(text) for text, _ in rows) + 2
    columns = [("params", lambda item: _num(item.params))]
    if flops.unavailable is None:
        columns.append(("FLOPs/token", lambda item: _num(item.flops)))
    widths = [max(len(title), *(len(get(item)) for _, item in rows)) for title, get in columns]
    head = " " * width + "  ".join(title.rjust(w) for (title, _), w in zip(columns, widths, strict=True))
    lines = [head.rstrip()]
    for text, item in rows:
        cells = "  ".join(get(item).rjust(w) for (_, get), w in zip(columns, widths, strict=True))
        lines.append((text.ljust(width) + cells).rstrip())
    sizes = model.sizes
    kv = f", {sizes['n_kv_heads']} key/value heads" if sizes["n_kv_heads"] != sizes["n_heads"] else ""
    kv += f", head_dim {sizes['head_dim']}" if sizes.get("head_dim") is not None else ""
    lines += [
        "",
        f"d_model {sizes['d_model']}, {sizes['n_heads']} heads{kv}, d_ff {sizes['d_ff']}, "
        f"vocab {sizes['vocab_size']:,}, max_len {sizes['max_len']:,}",
        f"params: {model.num_parameters()}",
        _flops_line(flops),
    ]
    if flops.unavailable is None:
        lines += textwrap.wrap(FLOPS_NOTE, width=110)
    return "\n".join(lines)


def _flops_line(flops: FlopCount) -> str:
    if flops.unavailable is not None:
        return f"forward FLOPs per token: n/a ({flops.unavailable})"
    total = flops.per_token("")
    line = f"forward FLOPs per token: {_num(total)} ({_si(total)}FLOPs) at seq_len {flops.seq_len}"
    if flops.why_not_meta is not None:
        line += f", counted on {flops.device} because {flops.why_not_meta}"
    return line


def _si(value: float) -> str:
    """``2.61 G``, ``393 K``: three significant digits and a unit prefix."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}"
    return f"{value:.3g} "


# ------------------------------------------------------------------------------------------------ pictures


def _label(*lines: str) -> str:
    return "\\n".join(line for line in lines if line)


def _stats(params: int | None, flops: float | None) -> str:
    parts = []
    if params:
        parts.append(f"{params:,} params")
    if flops:
        parts.append(f"{_num(flops)} FLOPs/tok")
    return " · ".join(parts)


def _style(module: nn.Module) -> dict[str, str]:
    kind = getattr(type(module), "block_kind", "op")
    style = {"fillcolor": KIND_COLORS.get(kind, "#ffffff")}
    if kind == "op":
        style.update(shape="ellipse", fontsize="9")
    return style


def to_graphviz(model: Transformer, flops: FlopCount, name: str | None = None) -> graphviz.Digraph:
    """The model as a Graphviz digraph.

    Embedding -> each stack as a cluster (position, then one sub-cluster per distinct layer graph, labelled with
    the layers that use it and showing its nodes and their inputs, then the final norm) -> head. An
    encoder-decoder's encoder output feeds the ``memory`` input of the decoder's layer graphs.
    """
    title = f"{name or 'model'}: {model.topology}, {model.num_parameters():,} params"
    if flops.unavailable is None:
        title += f", {_num(flops.per_token(''))} FLOPs/token at seq_len {flops.seq_len}"
    graph = graphviz.Digraph(
        name or "model",
        graph_attr={"label": title, "labelloc": "t", "fontname": "Helvetica", "fontsize": "14"},
        node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica", "fontsize": "10"},
        edge_attr={"fontname": "Helvetica", "fontsize": "9"},
    )
    drawing = _Drawing(graph, flops)
    embedding = drawing.module(graph, "embedding", model.embedding)
    if model.token_type is not None:
        graph.edge(drawing.module(graph, "token_type", model.token_type), embedding, label="added")
    last, memory = embedding, None
    for stack_name, stack in _stacks(model):
        last = drawing.stack(stack_name, stack, embedding, memory)
        memory = last
    if model.head is not None:
        head = drawing.module(graph, "head", model.head)
        graph.edge(last, head)
        if _tied(model):
            graph.edge(head, embedding, label="tied weight", style="dashed", dir="none", constraint="false")
    return graph


class _Drawing:
    """Adds the model's modules to a digraph, with their block names, parameters and FLOPs per token."""

    def __init__(self, graph: graphviz.Digraph, flops: FlopCount) -> None:
        self.graph = graph
        self.flops = flops
        self.owned = _Owned()  # a tied head adds no parameters of its own

    def module(self, where: graphviz.Digraph, module_name: str, module: nn.Module) -> str:
        """One node for a top-level module; its id is its module name with dots as underscores."""
        node_id = module_name.replace(".", "_")
        stats = _stats(self.owned(module), self.flops.per_token(module_name))
        where.node(node_id, _label(module_name.rsplit(".", 1)[-1], _block(module), stats), **_style(module))
        return node_id

    def stack(self, stack_name: str, stack: Stack, source: str, memory: str | None) -> str:
        """A stack's cluster fed by ``source`` (and ``memory``); returns the id of its last node."""
        uses: dict[GraphSpec, list[int]] = {}
        for i, layer in enumerate(stack.layers):
            uses.setdefault(layer.spec, []).append(i)
        n = len(stack.layers)
        with self.graph.subgraph(name=f"cluster_{stack_name}") as cluster:
            what = "causal" if stack.causal else "bidirectional"
            cluster.attr(label=f"{stack_name}: {n} layer{'s' * (n != 1)}, {what}", style="rounded", color="#888888")
            last = self.module(cluster, f"{stack_name}.position", stack.position)
            self.graph.edge(source, last)
            if stack.embed_norm is not None:
                norm = self.module(cluster, f"{stack_name}.embed_norm", stack.embed_norm)
                self.graph.edge(last, norm)
                last = norm
            first_input = None
            for k, (spec, indices) in enumerate(uses.items()):
                prefix = f"{stack_name}{k}_"
                self._layer(cluster, f"cluster_{stack_name}{k}", prefix, stack_name, stack.layers, indices)
                self.graph.edge(last, prefix + "x")
                if memory is not None and "memory" in spec.inputs:
                    self.graph.edge(memory, prefix + "memory", label="encoder output", color="#3c78d8")
                first_input = first_input or prefix + "x"
                last = prefix + spec.output
            if n > len(uses):
                self.graph.edge(last, first_input, label=f"repeat: {n} layers", style="dashed", constraint="false")
            if stack.final_norm is not None:
                norm = self.module(cluster, f"{stack_name}.final_norm", stack.final_norm)
                self.graph.edge(last, norm)
                last = norm
        return last

    def _layer(
        self,
        parent: graphviz.Digraph,
        cluster_name: str,
        prefix: str,
        stack_name: str,
        layers: Sequence[LayerGraph],
        indices: list[int],
    ) -> None:
        """One layer graph as a sub-cluster: its inputs, its nodes and an edge from each node's inputs."""
        layer = layers[indices[0]]
        module_name = f"{stack_name}.layers.{indices[0]}"
        with parent.subgraph(name=cluster_name) as cluster:
            per_layer = _stats(None, self.flops.per_token(module_name))
            cluster.attr(
                label=_label(_layers_label(indices), per_layer and f"{per_layer} per layer"),
                style="rounded,dashed",
                color="#aaaaaa",
            )
            for layer_input in layer.spec.inputs:
                cluster.node(prefix + layer_input, layer_input, shape="ellipse", style="filled", fillcolor="#ffffff")
            for node in layer.spec.nodes:
                block = getattr(layer, node.name)
                params = sum(p.numel() for p in block.parameters() if p.requires_grad)
                stats = _stats(params, self.flops.per_token(f"{module_name}.{node.name}"))
                cluster.node(prefix + node.name, _label(node.name, _block(block), stats), **_style(block))
                for source in node.inputs:
                    cluster.edge(prefix + source, prefix + node.name)


def render(graph: graphviz.Digraph, fmt: str) -> bytes:
    """Render a digraph with Graphviz's ``dot``; :class:`GraphvizMissing` when it is not installed."""
    if shutil.which("dot") is None:
        raise GraphvizMissing(fmt)
    try:
        return graph.pipe(format=fmt)
    except graphviz.ExecutableNotFound as err:
        raise GraphvizMissing(fmt) from err
