"""What a stack computes once per forward and hands to the attention blocks of all its layers.

Masks, rotary tables and position biases depend only on positions and padding, not on the layer, so
the stack builds them once (:func:`self_attention_context`) and every attention block reads them from
an :class:`AttentionContext`. Position blocks implement :class:`Position`: absolute schemes add to the
embeddings, rotary schemes return ``(cos, sin)`` tables, bias schemes return additive score biases.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class AttentionContext:
    """Inputs shared by the attention blocks of one stack for one forward.

    Attributes:
        masks: per sliding window (``None`` = global attention), the ``attn_mask`` for
            ``F.scaled_dot_product_attention``: ``None``, a boolean mask (True = may attend) or an additive
            float mask, broadcastable to ``[B, H, Tq, Tk]``.
        is_causal: when a mask is ``None``, whether to pass ``is_causal=True`` to SDPA.
        rope: ``(cos, sin)`` tables ``[Tq, rot_dim]`` for the query positions, or ``None``.
        memory_mask: the cross-attention mask ``[B, 1, 1, Tk]`` (True = may attend), or ``None``.
    """

    masks: dict[int | None, Tensor | None] = field(default_factory=lambda: {None: None})
    is_causal: bool = False
    rope: tuple[Tensor, Tensor] | None = None
    memory_mask: Tensor | None = None


class Position(nn.Module):
    """Base of position blocks; on its own it encodes no position (``none`` registers a subclass).

    A subclass overrides whichever of the three hooks its scheme uses.
    """

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        """Absolute schemes add to the embeddings. x: [B, T, d_model], positions: [T] -> [B, T, d_model]."""
        return x

    def rotary(self, positions: Tensor) -> tuple[Tensor, Tensor] | None:
        """Rotary schemes return ``(cos, sin)``, each ``[T, rot_dim]``, for the query positions."""
        return None

    def score_bias(self, q_pos: Tensor, k_pos: Tensor, *, causal: bool) -> Tensor | None:
        """Bias schemes return an additive score bias ``[1, H, Tq, Tk]``."""
        return None


def self_attention_context(
    position: Position,
    positions: Tensor,
    *,
    causal: bool,
    padding_mask: Tensor | None = None,
    windows: Iterable[int | None] = (None,),
) -> AttentionContext:
    """Build the context of a self-attention stack.

    Args:
        position: the stack's position block.
        positions: ``[T]`` absolute positions of the tokens (queries and keys).
        causal: whether a token may only attend to itself and earlier tokens.
        padding_mask: ``[B, T]``, 1 for tokens and 0 for padding, or ``None``.
        windows: the sliding windows used by the stack's attention blocks (``None`` = global).

    A token always attends to itself, so no row of a mask is empty (a padded query would otherwise
    produce NaN that leaks into real tokens through later layers).
    """
    bias = position.score_bias(positions, positions, causal=causal)
    masks: dict[int | None, Tensor | None] = {}
    for window in windows:
        if window is None and padding_mask is None and bias is None:
            masks[window] = None  # the SDPA fast path (is_causal) needs no tensor
            continue
        rel = positions[:, None] - positions[None, :]  # query minus key: [T, T]
        allowed = torch.ones_like(rel, dtype=torch.bool)
        if causal:
            allowed = rel >= 0
        if window is not None:
            allowed = allowed & ((rel < window) if causal else (rel.abs() < window))
        if padding_mask is not None:
            allowed = (allowed & padding_mask[:, None, None, :].bool()) | (rel == 0)
        masks[window] = allowed if bias is None else bias.masked_fill(~allowed, float("-inf"))
    return AttentionContext(masks=masks, is_causal=causal, rope=position.rotary(positions))


def memory_mask(padding_mask: Tensor | None) -> Tensor | None:
    """Cross-attention mask ``[B, 1, 1, Tk]`` from the encoder's ``[B, Tk]`` padding mask."""
    return None if padding_mask is None else padding_mask[:, None, None, :].bool()
