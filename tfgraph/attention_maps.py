"""Attention inspection: the weights of every attention block for an input, heatmaps, and what each token reads.

The attention blocks know nothing of it: they score through their ``attend`` method (the kernel the stack chose; see
:class:`~tfgraph.blocks.attention.ScaledDotProductAttention`). While :func:`recording` runs, it replaces that method
on each attention block of the model by :func:`recorded_attention`, which computes ``softmax(q k^T * scale + mask)``
explicitly (the same output as the kernels) and keeps the weights, and the stacks build dense masks for it; on exit
the blocks' own method and the stacks' backend are back.

    weights = attention_weights(model, input_ids)          # {"decoder.layers.0.attn": [B, H, Tq, Tk], ...}
    attention_map(model, input_ids, layer=3, head=5)         # [B, Tq, Tk]
    print(attention_report(model, tokens, input_ids, "out")) # a PNG per layer, and the top keys of each token
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tfgraph.blocks.attention import ScaledDotProductAttention
from tfgraph.blocks.kernels import math_attention
from tfgraph.models.transformer import Stack


def recorded_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, is_causal: bool, scale: float | None
) -> tuple[Tensor, Tensor]:
    """What the attention kernels compute (without dropout), with the weights made explicit: the math reference,
    :func:`tfgraph.blocks.kernels.math_attention` (see there for the shapes). Returns the output and the weights."""
    return math_attention(q, k, v, mask, is_causal=is_causal, scale=scale)


@contextmanager
def recording(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Record the attention weights of the forwards of ``model`` run inside the ``with`` block.

    When the block exits, the dict yielded holds each attention block's weights under its module name
    (``decoder.layers.0.attn``), ``[B, H, Tq, Tk]``; of several forwards, the last one's.
    """
    blocks = {m: name for name, m in model.named_modules() if isinstance(m, ScaledDotProductAttention)}
    stacks = {m: m.attention_backend for m in model.modules() if isinstance(m, Stack)}
    by_module: dict[nn.Module, Tensor] = {}
    named: dict[str, Tensor] = {}
    for block in blocks:
        block.attend = _recorder(block, by_module)  # an instance attribute: it hides the class's method
    for stack in stacks:
        stack.attention_backend = "math"  # dense masks, which the recorder reads
    try:
        yield named
    finally:
        for block in blocks:
            del block.attend
        for stack, backend in stacks.items():
            stack.attention_backend = backend
        named.update({blocks[block]: weights for block, weights in by_module.items()})


def _recorder(block: ScaledDotProductAttention, into: dict[nn.Module, Tensor]) -> Callable[..., Tensor]:
    """An ``attend`` for ``block`` that computes the weights explicitly and keeps them in ``into[block]``."""

    def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, is_causal: bool = False, **_: Any) -> Tensor:
        y, into[block] = recorded_attention(q, k, v, mask, is_causal=is_causal, scale=block.softmax_scale)
        return y

    return attend


@torch.no_grad()
def attention_weights(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    decoder_input_ids: Tensor | None = None,
    decoder_attention_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """Run ``model`` once (eval mode) and return the attention weights of every attention block.

    An encoder-decoder given no ``decoder_input_ids`` runs its encoder only.

    Returns:
        ``{module name: [B, H, Tq, Tk]}`` in the order the blocks ran (``encoder.layers.0.attn``, ...,
        ``decoder.layers.0.cross``, ...). Each row sums to 1; masked keys get 0.
    """
    was_training = model.training
    model.eval()
    try:
        with recording(model) as weights:
            if model.topology == "encoder_decoder" and decoder_input_ids is None:
                model.encode(input_ids, attention_mask)
            elif model.topology == "encoder_decoder":
                model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask)
            else:
                model(input_ids, attention_mask)
    finally:
        model.train(was_training)
    return weights


def attention_map(
    model: nn.Module,
    input_ids: Tensor,
    *,
    layer: int,
    head: int | None = None,
    stack: str | None = None,
    node: str = "attn",
    **inputs: Tensor | None,
) -> Tensor:
    """The weights of one attention block (and head) for an input.

    Args:
        model: a tfgraph model.
        input_ids: [B, T].
        layer: the layer index within the stack.
        head: a head index, or ``None`` for all heads.
        stack: ``"encoder"`` or ``"decoder"``; default the stack the input reaches last (the decoder of a
            decoder-only model or of an encoder-decoder given ``decoder_input_ids``, else the encoder).
        node: the attention node's name in the layer graph (``attn``; ``cross`` for cross-attention in the presets).
        **inputs: ``attention_mask``, ``decoder_input_ids``, ``decoder_attention_mask``.

    Returns:
        [B, Tq, Tk] for one head, [B, H, Tq, Tk] for all.
    """
    if stack is None:
        uses_decoder = model.topology == "decoder_only" or inputs.get("decoder_input_ids") is not None
        stack = "decoder" if uses_decoder and model.topology != "encoder_only" else "encoder"
    weights = attention_weights(model, input_ids, **inputs)
    name = f"{stack}.layers.{layer}.{node}"
    if name not in weights:
        raise KeyError(f"no attention block {name!r}; recorded: {', '.join(weights)}")
    return weights[name] if head is None else weights[name][:, head]


def top_attended(
    weights: Tensor, query_tokens: Sequence[str], key_tokens: Sequence[str], k: int = 3
) -> list[tuple[str, list[tuple[str, float]]]]:
    """For each query token, the ``k`` key tokens it attends to most.

    Args:
        weights: [Tq, Tk] (e.g. averaged over heads).
        query_tokens: Tq labels.
        key_tokens: Tk labels.
        k: how many keys per query.

    Returns:
        ``[(query token, [(key token, weight), ...]), ...]``, keys by decreasing weight.
    """
    k = min(k, weights.shape[-1])
    values, index = weights.float().topk(k, dim=-1)
    return [
        (query_tokens[q], [(key_tokens[j], v) for j, v in zip(index[q].tolist(), values[q].tolist(), strict=True)])
        for q in range(weights.shape[0])
    ]


def plot_heads(
    weights: Tensor, query_tokens: Sequence[str], key_tokens: Sequence[str], path: str | Path, *, title: str = ""
) -> Path:
    """Write a heatmap PNG of one layer's attention: a panel per head, queries down, keys across, token labels
    (a newline or tab written ``\\n``, ``\\t``; a token of spaces ``␣``), a colour bar of the weights (0 to 1);
    the image is as large as its labels need, none cut off.

    Args:
        weights: [H, Tq, Tk].
        query_tokens: Tq labels.
        key_tokens: Tk labels.
        path: the PNG to write (its folder is created).
        title: the figure's title.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("attention heatmaps need matplotlib: pip install matplotlib") from err
    heads, tq, tk = weights.shape
    cols = min(heads, 4)
    rows = -(-heads // cols)
    size = 0.35 * max(tq, tk) + 1.5
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size + 1, rows * size), squeeze=False, layout="constrained")
    image = None
    for h, ax in enumerate(axes.flat):
        if h >= heads:
            ax.axis("off")
            continue
        image = ax.imshow(weights[h].float().cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(f"head {h}", fontsize=9)
        ax.set_xticks(range(tk), labels=[token_label(t) for t in key_tokens], rotation=90, fontsize=7)
        ax.set_yticks(range(tq), labels=[token_label(t) for t in query_tokens], fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")  # the canvas grows to hold every label
    plt.close(fig)
    return path


def token_label(token: str) -> str:
    """A token as a heatmap label: newlines and tabs written out, a token of spaces only as ``␣`` per space."""
    if token and not token.strip(" "):
        return "␣" * len(token)
    return token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def attention_report(
    model: nn.Module,
    tokens: list[str],
    input_ids: Tensor,
    out_dir: str | Path,
    *,
    top: int = 3,
    layers: Sequence[int] | None = None,
) -> str:
    """Heatmaps of every self-attention layer for one sequence, and the tokens each token attends to most.

    Writes ``<out_dir>/<block name>.png`` (``decoder.layers.0.attn.png``: a panel per head) for each self-attention
    block the input reaches (the encoder's for an encoder-decoder). Returns the report as text: the files written,
    then per layer each token with its ``top`` most attended tokens (weights averaged over the heads).

    Args:
        model: a tfgraph model.
        tokens: the T token strings of ``input_ids``.
        input_ids: [T] or [1, T].
        out_dir: where the PNGs go (created).
        top: keys listed per token.
        layers: the indices of the layers to report (``None``: all).

    Raises:
        ValueError: as many tokens as ids are needed; a layer the model does not have.
    """
    ids = input_ids.reshape(1, -1)
    if ids.shape[1] != len(tokens):
        raise ValueError(f"{len(tokens)} tokens for {ids.shape[1]} input ids")
    # self-attention only: cross-attention weights are not over these tokens
    weights = {name: w for name, w in attention_weights(model, ids).items() if w.shape[-1] == len(tokens)}
    if layers is not None:
        have = sorted({_layer_index(name) for name in weights})
        missing = sorted(set(layers) - set(have))
        if missing:
            raise ValueError(f"no layer {', '.join(map(str, missing))}; the model's layers are {have[0]} to {have[-1]}")
        weights = {name: w for name, w in weights.items() if _layer_index(name) in layers}
    out_dir = Path(out_dir)
    lines, summary = [], []
    for name, w in weights.items():
        path = plot_heads(w[0], tokens, tokens, out_dir / f"{name}.png", title=name)
        lines.append(f"wrote {path}")
        summary.append(f"{name} (mean of {w.shape[1]} heads):")
        for query, keys in top_attended(w[0].mean(0), tokens, tokens, k=top):
            read = ", ".join(f"{key!r} {v:.2f}" for key, v in keys if v > 0)  # masked keys are no answer
            summary.append(f"  {query!r:>14} -> {read}")
    return "\n".join(lines + summary)


def _layer_index(block_name: str) -> int:
    """``decoder.layers.3.attn`` -> 3."""
    return int(block_name.split(".layers.")[1].split(".")[0])
