"""Attention kernels: how ``softmax(q k^T * scale + bias, masked) v`` is computed, kept apart from what a block computes.

An attention block projects its heads and calls :meth:`~tfgraph.blocks.attention.ScaledDotProductAttention.attend`;
which kernel runs is the stack's choice (``model.attention_backend``), written into the
:class:`~tfgraph.blocks.context.AttentionContext` with the masks in the form that kernel takes:

- ``sdpa``: ``F.scaled_dot_product_attention`` with a dense mask (``None`` where there is none: the flash kernel).
  On CUDA, grouped key/value heads (GQA) with a mask are repeated to the query heads first, since the fused kernels that
  take a mask do not take ``enable_gqa`` and SDPA would otherwise fall back to its math kernel.
- ``flex``: ``torch.nn.attention.flex_attention`` with a :class:`FlexMask`: a block mask for causality, sliding windows
  and padding (blocks that are wholly masked are skipped), and a score modification for ALiBi, T5 and other position
  biases (computed inside the kernel from a per-distance table, never as ``[B, H, T, T]``). Compiled with
  ``torch.compile`` once per shape. It has no attention dropout, and on CPU no backward pass (PyTorch 2.13).
- ``math``: the explicit computation, :func:`math_attention`: the reference the others are tested against.
- ``auto`` (the default): ``flex`` where it pays and runs (CUDA, a forward without a KV cache whose masks carry a
  position bias or a sliding window, no attention dropout while training), ``sdpa`` everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "sdpa", "flex", "math")
COMPILE_FLEX = True  # False runs flex_attention unfused (eager): the same numbers, slow; tests use it to skip compiling


@dataclass
class FlexMask:
    """What ``flex_attention`` takes in place of a dense mask.

    Attributes:
        block_mask: which (query, key) pairs may attend, as a ``BlockMask``; ``None`` = every pair.
        score_mod: ``(score, b, h, q, kv) -> score`` adding a position bias; ``None`` = no bias.
    """

    block_mask: Any = None
    score_mod: Callable[..., Tensor] | None = None


def math_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    dropout: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """The reference: scores, mask, softmax and weighted values written out; returns the output and the weights.

    ``weights = softmax(q k^T * scale + mask)``; the causal mask of ``is_causal`` aligns the top-left corner as in SDPA;
    ``dropout`` drops weights (after the softmax, as SDPA does).

    Args:
        q: [B, H, Tq, hd].
        k: [B, H_kv, Tk, hd]; ``H_kv`` divides ``H`` (grouped heads are repeated).
        v: [B, H_kv, Tk, hd].
        mask: ``None``, a boolean mask (True = may attend) or an additive one, broadcastable to [B, H, Tq, Tk].
        is_causal: mask keys after each query.
        scale: the score scale; ``None`` = ``1 / sqrt(hd)``.
        dropout: the probability of dropping a weight.

    Returns:
        The output [B, H, Tq, hd] and the weights [B, H, Tq, Tk] (before dropout).
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if is_causal:
        later = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(later, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = scores.softmax(dim=-1)
    dropped = F.dropout(weights, dropout) if dropout else weights
    return dropped @ v, weights


def repeats_kv_for_mask(q: Tensor, k: Tensor, mask: Tensor | None) -> bool:
    """Whether :func:`sdpa_attention` repeats grouped key/value heads: on CUDA, with GQA and a mask (the fused kernels
    that take a mask take no ``enable_gqa``); elsewhere SDPA's own GQA stays fused (the CPU flash kernel takes both)."""
    return mask is not None and q.shape[1] != k.shape[1] and q.device.type == "cuda"


def sdpa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    dropout: float = 0.0,
) -> Tensor:
    """``F.scaled_dot_product_attention``, shapes as :func:`math_attention`."""
    if repeats_kv_for_mask(q, k, mask):
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        dropout_p=dropout,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )


_compiled_flex: Callable[..., Tensor] | None = None


def _flex_kernel() -> Callable[..., Tensor]:
    """``flex_attention``, compiled once per process (and per shape: ``dynamic=False``, as its CPU template asks) unless
    the caller is already being compiled or :data:`COMPILE_FLEX` is off."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if not COMPILE_FLEX or torch.compiler.is_compiling():
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def flex_attention(q: Tensor, k: Tensor, v: Tensor, mask: FlexMask, *, scale: float | None = None) -> Tensor:
    """``flex_attention`` with ``mask``'s block mask and score modification, shapes as :func:`math_attention`."""
    if q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        raise RuntimeError(
            "attention_backend=flex: FlexAttention has no backward pass on CPU in this PyTorch; train on CPU with "
            "model.attention_backend=auto (or sdpa), and use flex there for inference"
        )
    return _flex_kernel()(
        q,
        k,
        v,
        score_mod=mask.score_mod,
        block_mask=mask.block_mask,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | FlexMask | None,
    *,
    kernel: str,
    is_causal: bool = False,
    scale: float | None = None,
    dropout: float = 0.0,
) -> Tensor:
    """Run ``kernel`` (``sdpa``, ``flex`` or ``math``) on the heads; ``mask`` is in that kernel's form (a
    :class:`FlexMask` for ``flex``, a dense mask or ``None`` otherwise)."""
    if isinstance(mask, FlexMask):
        if dropout:
            raise RuntimeError("attention_backend=flex has no attention dropout; train with auto (or sdpa)")
        return flex_attention(q, k, v, mask, scale=scale)
    if kernel == "math":
        return math_attention(q, k, v, mask, is_causal=is_causal, scale=scale, dropout=dropout)[0]
    return sdpa_attention(q, k, v, mask, is_causal=is_causal, scale=scale, dropout=dropout)
