"""Builders: a checked :class:`~tfgraph.spec.ModelSpec` -> a topology module, after a dry run on ``meta``."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from tfgraph.blocks.context import self_attention_context
from tfgraph.graph import GraphSpec, LayerGraph, Part, attention_windows, call_node
from tfgraph.models.transformer import DecoderOnly, EncoderDecoder, EncoderOnly, Stack, Transformer
from tfgraph.registry import Problems, block_protocol, registered_kind
from tfgraph.spec import ModelSpec, StackSpec, model_spec

TOPOLOGY_CLASSES = {"decoder_only": DecoderOnly, "encoder_only": EncoderOnly, "encoder_decoder": EncoderDecoder}
DRY_RUN_SHAPE = (2, 8)  # batch and sequence length of the dry run
MEMORY_LEN = 5  # encoder length in the dry run of a cross-attending layer (differs from the decoder's on purpose)


def build_model(model_cfg: Any, *, device: torch.device | str | None = None) -> Transformer:
    """Build the model a config describes.

    The config is checked first (every problem reported together, naming its config path), then every
    distinct layer graph runs once on the ``meta`` device to find shape mismatches, and only then are
    weights allocated and initialised.

    Args:
        model_cfg: the ``model`` node of a composed config (``tfgraph.compose(...).model``) or a plain dict.
        device: where to allocate the weights (default: the current default device).

    Raises:
        tfgraph.ConfigError: for any config mistake.
    """
    spec = model_spec(model_cfg)
    dry_run(spec)
    with torch.device(device) if device is not None else nullcontext():
        model = assemble(spec)
        init_weights(model, spec.init_std)
    return model


def assemble(spec: ModelSpec) -> Transformer:
    """Construct the modules of a spec (fresh blocks for every layer; nothing shared but what is tied)."""
    parts: dict[str, Any] = {
        "embedding": spec.embedding.build(),
        "token_type": spec.token_type.build() if spec.token_type else None,
        "head": spec.head.build() if spec.head else None,
    }
    stacks = {
        name: _build_stack(stack, spec)
        for name, stack in (("encoder", spec.encoder), ("decoder", spec.decoder))
        if stack is not None
    }
    return TOPOLOGY_CLASSES[spec.topology](
        **parts,
        **stacks,
        sizes=spec.sizes,
        init_std=spec.init_std,
        tie_embeddings=spec.tie_embeddings,
        spec=spec,
    )


def _build_stack(stack: StackSpec, spec: ModelSpec) -> Stack:
    return Stack(
        position=spec.position.build(),
        layers=[LayerGraph(graph) for graph in stack.layers],
        causal=stack.causal,
        dropout=spec.sizes["dropout"],
        embed_norm=spec.embed_norm.build() if spec.embed_norm else None,
        final_norm=spec.final_norm.build() if spec.final_norm else None,
        activation_checkpointing=spec.activation_checkpointing,
        attention_backend=spec.attention_backend,
    )


def init_weights(model: nn.Module, std: float) -> None:
    """Normal(0, std) for linear, embedding and learned position weights; zero biases; norms reset."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
        elif registered_kind(type(module)) in ("embedding", "head", "position"):
            for name, param in module.named_parameters(recurse=False):
                if name == "bias":
                    nn.init.zeros_(param)
                elif param.dim() >= 2:
                    nn.init.normal_(param, 0.0, std)
        elif registered_kind(type(module)) == "norm" and hasattr(module, "reset_parameters"):
            module.reset_parameters()


# ------------------------------------------------------------------------------------------------- dry run


def dry_run(spec: ModelSpec) -> None:
    """Build and run each distinct layer graph once on ``meta``; raise one ConfigError naming each failing node."""
    problems = Problems()
    with torch.device("meta"):
        _dry_run_parts(spec, problems)
        position = _try_part(spec.position, problems)
        if position is not None:
            for stack in (spec.encoder, spec.decoder):
                if stack is not None:
                    for graph in dict.fromkeys(stack.layers):  # distinct specs, in order
                        _dry_run_graph(graph, position, stack.causal, spec.sizes["d_model"], problems)
    problems.raise_if_any()


def _dry_run_parts(spec: ModelSpec, problems: Problems) -> None:
    """Build the parts outside the layers and check the embedding's and the head's shapes and their tying."""
    embedding = _try_part(spec.embedding, problems)
    head = _try_part(spec.head, problems)
    for part in (spec.token_type, spec.embed_norm, spec.final_norm):
        _try_part(part, problems)
    if spec.tie_embeddings and embedding is not None and head is not None:
        e, h = getattr(embedding, "weight", None), getattr(head, "weight", None)
        if not isinstance(e, Tensor) or not isinstance(h, Tensor) or e.shape != h.shape:
            problems.add(
                "model.tie_embeddings",
                f"cannot tie {type(head).__name__}.weight {_shape(h)} to {type(embedding).__name__}.weight "
                f"{_shape(e)}; set model.tie_embeddings=false or use blocks with matching weights",
            )
    batch, length = DRY_RUN_SHAPE
    d_model, vocab_size = spec.sizes["d_model"], spec.sizes["vocab_size"]
    if embedding is not None:
        ids = torch.zeros(batch, length, dtype=torch.long)
        _check_output(embedding, ids, (batch, length, d_model), spec.embedding.path, problems)
    if head is not None:  # the model call returns logits [B, T, vocab]
        _check_output(head, torch.empty(batch, length, d_model), (batch, length, vocab_size), spec.head.path, problems)


def _check_output(block: nn.Module, x: Tensor, want: tuple[int, ...], path: str, problems: Problems) -> None:
    """Run a model part on ``meta`` and record a problem unless it returns a tensor of shape ``want``."""
    try:
        out = block(x)
    except Exception as err:
        problems.add(path, f"{type(block).__name__} failed on {_shape(x)}: {type(err).__name__}: {err}")
        return
    if not isinstance(out, Tensor) or tuple(out.shape) != want:
        problems.add(path, f"{type(block).__name__} must map {_shape(x)} to {list(want)} here, but gives {_shape(out)}")


def _try_part(part: Part | None, problems: Problems) -> nn.Module | None:
    """A bound model part built (``None`` for no part, or one that fails: the problem is at its path)."""
    return None if part is None else _try_build(part.cls, part.kwargs, part.path, problems)


def _try_build(cls: type, kwargs: Mapping[str, Any], path: str, problems: Problems) -> nn.Module | None:
    """``cls(**kwargs)``, or None with a problem at ``path`` (the config of its arguments) when that fails."""
    try:
        return cls(**kwargs)
    except Exception as err:
        problems.add(path, f"{cls.__name__} could not be built: {type(err).__name__}: {err}")
        return None


def _dry_run_graph(graph: GraphSpec, position: nn.Module, causal: bool, d_model: int, problems: Problems) -> None:
    batch, length = DRY_RUN_SHAPE
    values: dict[str, Tensor | None] = {"x": torch.empty(batch, length, d_model)}
    if "memory" in graph.inputs:
        values["memory"] = torch.empty(batch, MEMORY_LEN, d_model)
    blocks = {}
    for node in graph.nodes:
        block = _try_build(node.cls, node.kwargs, node.source, problems)
        if block is None:
            return
        blocks[node.name] = (block, block_protocol(node.cls))
    try:
        windows = attention_windows(blocks.values()) or (None,)
        ctx = self_attention_context(position, torch.arange(length), causal=causal, windows=windows)
    except Exception as err:
        problems.add("model.position", f"{type(position).__name__} failed in a dry run: {type(err).__name__}: {err}")
        return
    for node in graph.nodes:
        args = [values[source] for source in node.inputs]
        block, protocol = blocks[node.name]
        try:
            out = call_node(block, args, protocol.context, ctx)
        except Exception as err:
            if not (isinstance(err, NotImplementedError) and "meta" in str(err).lower()):
                shapes = ", ".join(f"{s} {_shape(v)}" for s, v in zip(node.inputs, args, strict=True))
                problems.add(node.path, f"{node.cls.__name__} failed on inputs {shapes}: {type(err).__name__}: {err}")
                return
            out = torch.empty_like(args[0])  # a data-dependent op cannot run on meta: assume its input's shape
        if not isinstance(out, Tensor):
            problems.add(node.path, f"{node.cls.__name__} returned {type(out).__name__}, expected a tensor")
            return
        values[node.name] = out
    out = values[graph.output]
    if tuple(out.shape) != (batch, length, d_model):
        problems.add(
            f"{graph.path.rsplit('.', 1)[0]}.output",
            f"the layer must return its input's shape {[batch, length, d_model]} but node {graph.output!r} "
            f"gives {list(out.shape)}",
        )


def _shape(t: Any) -> str:
    return str(list(t.shape)) if isinstance(t, Tensor) else "(none)"


__all__ = ["build_model", "assemble", "dry_run", "init_weights", "model_spec"]
