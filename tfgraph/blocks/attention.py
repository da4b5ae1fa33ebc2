"""Attention blocks: multi-head self-attention (MHA, GQA, MQA), its sliding-window variant, cross-attention.

Every block takes the stack's :class:`~tfgraph.blocks.context.AttentionContext` after its inputs (declared by
``needs = ("context", ...)``): the masks, the rotary tables and the position biases are built once per forward by the
stack, not by each layer. Blocks that also declare ``"cache"`` take their own cache after the context while
generating (``None`` otherwise) and make it with ``new_cache``: self-attention appends its keys and values to a
preallocated :class:`~tfgraph.blocks.context.KVCache`; cross-attention projects the encoder memory once into a
:class:`~tfgraph.blocks.context.MemoryKV`.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import Tensor, nn

from tfgraph.blocks import kernels
from tfgraph.blocks.context import AttentionContext, KVCache, MemoryKV
from tfgraph.blocks.position import apply_rotary
from tfgraph.registry import AtLeast, Positive, Probability, extend_arguments, register


def _head_sizes(
    name: str, d_model: int, n_heads: int, n_kv_heads: int | None, head_dim: int | None = None
) -> tuple[int, int]:
    """Validate the head counts; returns ``(n_kv_heads, head_dim)`` (``head_dim`` None = ``d_model // n_heads``)."""
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    if n_heads <= 0 or n_kv_heads <= 0:
        raise ValueError(f"{name}: n_heads={n_heads} and n_kv_heads={n_kv_heads} must be positive")
    if head_dim is None and d_model % n_heads:
        raise ValueError(f"{name}: d_model={d_model} is not divisible by n_heads={n_heads}")
    if head_dim is not None and head_dim <= 0:
        raise ValueError(f"{name}: head_dim must be positive, got {head_dim}")
    if n_heads % n_kv_heads:
        raise ValueError(f"{name}: n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}")
    return n_kv_heads, d_model // n_heads if head_dim is None else head_dim


def _either(specific: bool | None, general: bool) -> bool:
    """A projection's own bias flag, or the block's ``bias`` when it is not set."""
    return general if specific is None else specific


def _split_heads(x: Tensor, n_heads: int) -> Tensor:
    """[B, T, n_heads * head_dim] -> [B, n_heads, T, head_dim]."""
    B, T, C = x.shape
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)


def _merge_heads(y: Tensor) -> Tensor:
    """[B, n_heads, T, head_dim] -> [B, T, n_heads * head_dim]."""
    B, H, T, D = y.shape
    return y.transpose(1, 2).contiguous().view(B, T, H * D)


def _as_mask(mask: Tensor | kernels.FlexMask | None, like: Tensor) -> Tensor | kernels.FlexMask | None:
    """SDPA takes a boolean mask or an additive one in the query's dtype (a float32 bias under bf16, say)."""
    if not isinstance(mask, Tensor) or mask.dtype == torch.bool:
        return mask
    return mask.to(like.dtype)


class ScaledDotProductAttention(nn.Module):
    """What the attention blocks share: scoring queries against keys, by the kernel the stack chose.

    Subclasses set ``n_heads``, ``n_kv_heads``, ``dropout`` and ``softmax_scale`` and call :meth:`attend` with their
    projected heads, the mask and the kernel of the context (:mod:`tfgraph.blocks.kernels`: SDPA, FlexAttention or
    the math reference; the block's math is the same for all). :func:`tfgraph.attention_maps.recording` replaces
    :meth:`attend` on an instance while it records, so the blocks' own code never knows.
    """

    n_heads: int
    n_kv_heads: int
    dropout: float
    softmax_scale: float | None

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | kernels.FlexMask | None,
        *,
        is_causal: bool = False,
        kernel: str = "sdpa",
    ) -> Tensor:
        """``softmax(q k^T * scale + mask) v``: q [B, H, Tq, hd], k and v [B, H_kv, Tk, hd] -> [B, H, Tq, hd].

        ``mask`` is ``None``, a boolean mask (True = may attend), an additive one in ``q``'s dtype, or a
        :class:`~tfgraph.blocks.kernels.FlexMask` (``kernel="flex"``); ``is_causal`` (with no mask) masks keys after
        each query. Dropout on the weights while training. ``kernel``: ``sdpa``, ``flex`` or ``math``.
        """
        return kernels.attend(
            q,
            k,
            v,
            mask,
            kernel=kernel,
            is_causal=is_causal,
            scale=self.softmax_scale,
            dropout=self.dropout if self.training else 0.0,
        )


@register("attention", "multihead")
class MultiHeadAttention(ScaledDotProductAttention):
    """Multi-head self-attention with grouped key/value heads (MHA, GQA or MQA).

    ``n_kv_heads`` key/value heads are shared by groups of ``n_heads // n_kv_heads`` query heads: ``None`` or
    ``n_heads`` is standard multi-head attention, ``1`` is multi-query attention. q, k and v come from one fused
    projection ``qkv`` whose output is laid out ``[q (n_heads * head_dim) | k (n_kv * head_dim) | v (n_kv * head_dim)]``.

    Args:
        d_model: model width.
        n_heads: number of query heads.
        head_dim: the size of each head, positive (HF ``head_dim``, T5 ``d_kv``; ``None`` = ``d_model // n_heads``);
            the projections map ``d_model`` to ``n_heads * head_dim`` and back.
        n_kv_heads: number of key/value heads (``None`` = ``n_heads``); must divide ``n_heads``.
        dropout: dropout probability on the attention weights (training only), in ``[0, 1)``.
        bias: whether the projections have biases (both ``qkv_bias`` and ``out_bias`` unless they are set).
        qkv_bias: whether the q, k and v projections have biases (``None`` = ``bias``; Qwen2: true, out false).
        out_bias: whether the output projection has a bias (``None`` = ``bias``).
        qk_norm: RMS-normalise q and k over ``head_dim`` (learned weights) before rotary and scoring.
        qk_norm_eps: the epsilon of that norm, positive.
        softmax_scale: the score scale, positive; ``None`` = ``1 / sqrt(head_dim)`` (T5 uses ``1.0``).
    """

    needs = ("context", "cache")
    # its weights as Hugging Face checkpoints hold them (tfgraph.interop): qkv is q, k and v stacked
    hf_layout = {"qkv": ("q", "k", "v"), "out": "o", "q_norm": "q_norm", "k_norm": "k_norm"}

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        head_dim: Annotated[int, AtLeast(1)] | None = None,
        dropout: Annotated[float, Probability] = 0.0,
        bias: bool = True,
        qkv_bias: bool | None = None,
        out_bias: bool | None = None,
        qk_norm: bool = False,
        qk_norm_eps: Annotated[float, Positive] = 1e-6,
        softmax_scale: Annotated[float, Positive] | None = None,
    ) -> None:
        super().__init__()
        self.n_kv_heads, self.head_dim = _head_sizes(type(self).__name__, d_model, n_heads, n_kv_heads, head_dim)
        self.d_model, self.n_heads = d_model, n_heads
        self.dropout = dropout
        self.softmax_scale = softmax_scale
        self.window: int | None = None  # the key of this block's mask in ctx.masks (None = global)
        q_dim = n_heads * self.head_dim
        self.qkv = nn.Linear(d_model, q_dim + 2 * self.n_kv_heads * self.head_dim, bias=_either(qkv_bias, bias))
        self.out = nn.Linear(q_dim, d_model, bias=_either(out_bias, bias))
        self.q_norm = nn.RMSNorm(self.head_dim, eps=qk_norm_eps) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=qk_norm_eps) if qk_norm else None

    def new_cache(self, batch: int, max_len: int, *, dtype: torch.dtype, device: torch.device | str) -> KVCache:
        """An empty cache of ``max_len`` slots for ``batch`` rows."""
        return KVCache(batch, self.n_kv_heads, self.head_dim, max_len, dtype=dtype, device=device)

    def forward(self, x: Tensor, ctx: AttentionContext, cache: KVCache | None = None) -> Tensor:
        """x: [B, T, d_model] -> [B, T, d_model]; with a cache, x holds the new tokens only."""
        kv_dim = self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([self.n_heads * self.head_dim, kv_dim, kv_dim], dim=-1)
        q = _split_heads(q, self.n_heads)  # [B, H, T, hd]
        k = _split_heads(k, self.n_kv_heads)  # [B, H_kv, T, hd]
        v = _split_heads(v, self.n_kv_heads)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if ctx.rope is not None:
            q, k = apply_rotary(q, *ctx.rope), apply_rotary(k, *ctx.rope)
        if cache is not None:  # attend to every cached slot the window reaches: [B, H_kv, S, hd]
            k, v = cache.update(k, v, ctx.offset)
            start = ctx.key_start[self.window]
            if start:
                k, v = k[:, :, start:], v[:, :, start:]
        mask = _as_mask(ctx.masks[self.window], q)
        y = self.attend(q, k, v, mask, is_causal=mask is None and ctx.is_causal, kernel=ctx.kernel)  # [B, H, T, hd]
        return self.out(_merge_heads(y))


@register("attention", "sliding_window")
class SlidingWindowAttention(MultiHeadAttention):
    """Self-attention in which a token sees only the ``window`` positions up to and including itself (Mistral).

    Causally, a query at position ``i`` attends to keys ``j`` with ``i - window < j <= i``; without causality, to
    keys with ``|i - j| < window``. The stack builds the banded mask (keyed by ``window`` in ``ctx.masks``); the
    block only names its window.

    Args:
        window: how many positions (the token's own included) a token attends to; positive.
        **arguments: every argument of :class:`MultiHeadAttention` (``d_model``, ``n_heads``, ``n_kv_heads``,
            ``head_dim``, ``dropout``, ``bias``, ``qkv_bias``, ``out_bias``, ``qk_norm``, ``qk_norm_eps``, ``softmax_scale``); the signature lists them all.
    """

    @extend_arguments(MultiHeadAttention.__init__)
    def __init__(self, *, window: Annotated[int, AtLeast(1)] = 4096, **arguments: Any) -> None:
        super().__init__(**arguments)
        if window <= 0:
            raise ValueError(f"{type(self).__name__}: window must be positive, got {window}")
        self.window = window


@register("attention", "cross")
class CrossAttention(ScaledDotProductAttention):
    """Attention from the decoder's tokens (queries) to the encoder's output (keys and values).

    Never causal and without rotary: the memory has no position relative to the queries. Padded memory positions
    are masked by ``ctx.memory_mask``.

    Args:
        d_model: model width.
        n_heads: number of query heads.
        head_dim: the size of each head, positive (HF ``head_dim``, T5 ``d_kv``; ``None`` = ``d_model // n_heads``);
            the projections map ``d_model`` to ``n_heads * head_dim`` and back.
        n_kv_heads: number of key/value heads (``None`` = ``n_heads``); must divide ``n_heads``.
        dropout: dropout probability on the attention weights (training only), in ``[0, 1)``.
        bias: whether the projections have biases (both ``qkv_bias`` and ``out_bias`` unless they are set).
        qkv_bias: whether the q and kv projections have biases (``None`` = ``bias``).
        out_bias: whether the output projection has a bias (``None`` = ``bias``).
        qk_norm: RMS-normalise q and k over ``head_dim`` (learned weights) before scoring.
        qk_norm_eps: the epsilon of that norm, positive.
        softmax_scale: the score scale, positive; ``None`` = ``1 / sqrt(head_dim)`` (T5 uses ``1.0``).
    """

    needs = ("context", "cache")
    # its weights as Hugging Face checkpoints hold them (tfgraph.interop): kv is k and v stacked
    hf_layout = {"q": "q", "kv": ("k", "v"), "out": "o", "q_norm": "q_norm", "k_norm": "k_norm"}

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        head_dim: Annotated[int, AtLeast(1)] | None = None,
        dropout: Annotated[float, Probability] = 0.0,
        bias: bool = True,
        qkv_bias: bool | None = None,
        out_bias: bool | None = None,
        qk_norm: bool = False,
        qk_norm_eps: Annotated[float, Positive] = 1e-6,
        softmax_scale: Annotated[float, Positive] | None = None,
    ) -> None:
        super().__init__()
        self.n_kv_heads, self.head_dim = _head_sizes(type(self).__name__, d_model, n_heads, n_kv_heads, head_dim)
        self.n_heads = n_heads
        self.dropout = dropout
        self.softmax_scale = softmax_scale
        q_dim = n_heads * self.head_dim
        self.q = nn.Linear(d_model, q_dim, bias=_either(qkv_bias, bias))
        self.kv = nn.Linear(d_model, 2 * self.n_kv_heads * self.head_dim, bias=_either(qkv_bias, bias))
        self.out = nn.Linear(q_dim, d_model, bias=_either(out_bias, bias))
        self.q_norm = nn.RMSNorm(self.head_dim, eps=qk_norm_eps) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=qk_norm_eps) if qk_norm else None

    def new_cache(self, batch: int, max_len: int, *, dtype: torch.dtype, device: torch.device | str) -> MemoryKV:
        """An empty holder for the memory's keys and values (filled by the first call)."""
        return MemoryKV()

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """The keys and values of the memory: [B, Tk, d_model] -> two [B, H_kv, Tk, hd]."""
        k, v = self.kv(memory).chunk(2, dim=-1)
        k = _split_heads(k, self.n_kv_heads)
        if self.k_norm is not None:
            k = self.k_norm(k)
        return k, _split_heads(v, self.n_kv_heads)

    def forward(self, x: Tensor, memory: Tensor, ctx: AttentionContext, cache: MemoryKV | None = None) -> Tensor:
        """x: [B, Tq, d_model], memory: [B, Tk, d_model] -> [B, Tq, d_model]."""
        q = _split_heads(self.q(x), self.n_heads)  # [B, H, Tq, hd]
        if self.q_norm is not None:
            q = self.q_norm(q)
        if cache is None:
            k, v = self.memory_kv(memory)  # [B, H_kv, Tk, hd]
        else:
            if cache.k is None:
                cache.k, cache.v = self.memory_kv(memory)
            k, v = cache.k, cache.v
        y = self.attend(q, k, v, _as_mask(ctx.memory_mask, q), kernel=ctx.kernel)  # [B, H, Tq, hd]
        return self.out(_merge_heads(y))
