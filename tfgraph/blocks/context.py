"""What a stack computes once per forward and hands to the attention blocks of all its layers.

Masks, rotary tables and position biases depend only on positions and padding, not on the layer, so
the stack builds them once (:func:`self_attention_context`, or :func:`cached_attention_context` when it
continues from a KV cache) and every attention block reads them from an :class:`AttentionContext`.
Position blocks implement :class:`Position`: absolute schemes add to the embeddings, rotary schemes
return ``(cos, sin)`` tables, bias schemes return additive score biases.

Generation keeps a :class:`StackCache` per causal stack: for each layer, the cache of every block that
declares ``needs = ("context", "cache")`` (a :class:`KVCache` for self-attention, a :class:`MemoryKV` for
cross-attention), how many *slots* are filled, and, once a call brought padding, which slots hold real
tokens. Slots and positions differ only under left padding: a row's position is the number of its real
tokens before it, so a left-padded row computes what it computes alone. Masks and score biases use slots
(their differences equal position differences for real tokens); embeddings and rotary tables use positions.

A :class:`StaticStackCache` keeps the same in tensors: its fill count is a tensor, every call writes its keys and
values at those slots and attends to all ``max_len`` slots through a mask. No shape and no Python value changes from
one token to the next, so ``torch.compile`` captures a decode step whole and runs it for every token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tfgraph.blocks.kernels import FlexMask


@dataclass
class AttentionContext:
    """Inputs shared by the attention blocks of one stack for one forward.

    Attributes:
        masks: per sliding window (``None`` = global attention), the ``attn_mask`` for
            ``F.scaled_dot_product_attention``: ``None``, a boolean mask (True = may attend) or an additive
            float mask, broadcastable to ``[B, H, Tq, Tk]``.
        is_causal: when a mask is ``None``, whether to pass ``is_causal=True`` to SDPA.
        rope: ``(cos, sin)`` tables for the query positions, ``[Tq, rot_dim]`` (or ``[B, 1, Tq, rot_dim]`` with
            per-row positions), or ``None``.
        memory_mask: the cross-attention mask ``[B, 1, 1, Tk]`` (True = may attend), or ``None``.
        offset: with a KV cache, the number of slots filled before this call; the queries are slots
            ``offset .. offset + Tq - 1`` and the keys slots ``key_start[window] .. offset + Tq - 1``.
        key_start: with a KV cache, per window, the first cached slot any query of this call may see (the masks
            of that window start there too). Unused without a cache.
        kernel: the attention kernel the stack chose (:mod:`tfgraph.blocks.kernels`): ``sdpa`` or ``math`` with the
            dense masks above, ``flex`` with :class:`~tfgraph.blocks.kernels.FlexMask` masks in their place.
    """

    masks: dict[int | None, Tensor | None] = field(default_factory=lambda: {None: None})
    is_causal: bool = False
    rope: tuple[Tensor, Tensor] | None = None
    memory_mask: Tensor | None = None
    offset: int = 0
    key_start: dict[int | None, int] = field(default_factory=dict)
    kernel: str = "sdpa"


class Position(nn.Module):
    """Base of position blocks; on its own it encodes no position (``none`` registers a subclass).

    A subclass overrides whichever of the three hooks its scheme uses. ``positions`` are ``[T]`` (every row
    alike, the common case) or ``[B, T]`` (per row, under left padding). A bias scheme whose bias depends on the
    query and key slots only through ``key - query`` sets ``relative_bias = True``: FlexAttention then reads it from a
    per-distance table instead of a ``[H, Tq, Tk]`` one.
    """

    relative_bias = False

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        """Absolute schemes add to the embeddings. x: [B, T, d_model], positions: [T] or [B, T] -> [B, T, d_model]."""
        return x

    def rotary(self, positions: Tensor) -> tuple[Tensor, Tensor] | None:
        """Rotary schemes return ``(cos, sin)``, each ``[T, rot_dim]`` (``[B, 1, T, rot_dim]`` for [B, T] positions)."""
        return None

    def score_bias(self, q_pos: Tensor, k_pos: Tensor, *, causal: bool) -> Tensor | None:
        """Bias schemes return an additive score bias ``[1, H, Tq, Tk]`` for query and key slots ``[Tq]``, ``[Tk]``."""
        return None


def _allowed(q_pos: Tensor, k_pos: Tensor, *, causal: bool, window: int | None, key_mask: Tensor | None) -> Tensor:
    """Which key slots each query slot may attend to: ``[Tq, Tk]``, or ``[B, 1, Tq, Tk]`` with a key mask.

    A query always attends to its own slot, so no row is empty (a padded query would otherwise produce NaN
    that leaks into real tokens through later layers).
    """
    rel = q_pos[:, None] - k_pos[None, :]  # query minus key
    allowed = rel >= 0 if causal else torch.ones_like(rel, dtype=torch.bool)
    if window is not None:
        allowed = allowed & ((rel < window) if causal else (rel.abs() < window))
    if key_mask is not None:
        allowed = (allowed & key_mask[:, None, None, :].bool()) | (rel == 0)
    return allowed


def has_score_bias(position: Position) -> bool:
    """Whether ``position`` adds a bias to the attention scores (overrides :meth:`Position.score_bias`)."""
    return type(position).score_bias is not Position.score_bias


def flex_mask(
    position: Position,
    *,
    queries: tuple[int, int],
    keys: tuple[int, int],
    causal: bool,
    window: int | None,
    key_mask: Tensor | None,
    device: torch.device | str,
) -> FlexMask:
    """The :class:`FlexMask` of what :func:`_allowed` and the position's score bias give as dense tensors.

    Args:
        position: the stack's position block (its score bias becomes the score modification).
        queries: ``(first slot, count)`` of the queries.
        keys: ``(first slot, count)`` of the keys.
        causal: whether a query sees only slots up to its own.
        window: the sliding window (``None`` = global).
        key_mask: ``[B, >= first key slot + count]``, True for slots holding real tokens, or ``None``.
        device: where the queries live.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    (q0, q_len), (k0, k_len) = queries, keys

    def allowed(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        rel = (q + q0) - (kv + k0)  # query slot minus key slot, as _allowed
        ok = rel >= 0 if causal else None
        if window is not None:
            near = (rel < window) if causal else (rel.abs() < window)
            ok = near if ok is None else ok & near
        if key_mask is not None:
            real = key_mask[b, kv + k0]
            ok = (real if ok is None else ok & real) | (rel == 0)
        return ok

    block_mask = None
    if causal or window is not None or key_mask is not None:
        batch = None if key_mask is None else key_mask.shape[0]
        block_mask = create_block_mask(allowed, batch, None, q_len, k_len, device=device)
    return FlexMask(block_mask=block_mask, score_mod=_flex_score_mod(position, queries, keys, causal, device))


def _flex_score_mod(
    position: Position, queries: tuple[int, int], keys: tuple[int, int], causal: bool, device: torch.device | str
) -> Any:
    """The position's score bias as ``flex_attention``'s ``score_mod``, or ``None`` without one."""
    if not has_score_bias(position):
        return None
    (q0, q_len), (k0, k_len) = queries, keys
    if position.relative_bias:  # one value per head and distance key - query: [H, R] from the smallest distance lo
        lo = k0 - (q0 + q_len - 1)
        distances = torch.arange(lo, k0 + k_len - q0, device=device)
        table = position.score_bias(torch.zeros(1, dtype=torch.long, device=device), distances, causal=causal)[0, :, 0]

        def relative(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return score + table[h, (kv + k0) - (q + q0) - lo].to(score.dtype)

        return relative
    bias = position.score_bias(
        torch.arange(q0, q0 + q_len, device=device), torch.arange(k0, k0 + k_len, device=device), causal=causal
    )[0]  # [H, Tq, Tk]

    def dense(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return score + bias[h, q, kv].to(score.dtype)

    return dense


def self_attention_context(
    position: Position,
    positions: Tensor,
    *,
    causal: bool,
    padding_mask: Tensor | None = None,
    windows: Iterable[int | None] = (None,),
    rope_positions: Tensor | None = None,
    kernel: str = "sdpa",
) -> AttentionContext:
    """Build the context of a self-attention stack over a whole sequence (no cache).

    Args:
        position: the stack's position block.
        positions: ``[T]`` slots of the tokens (queries and keys), ``0 .. T-1``.
        causal: whether a token may only attend to itself and earlier tokens.
        padding_mask: ``[B, T]``, 1 for tokens and 0 for padding, or ``None``.
        windows: the sliding windows used by the stack's attention blocks (``None`` = global).
        rope_positions: the positions rotary tables are taken at, ``[T]`` or ``[B, T]`` (default ``positions``).
        kernel: the attention kernel (``sdpa``, ``flex`` or ``math``); ``flex`` gets :class:`FlexMask` masks.
    """
    rope = position.rotary(positions if rope_positions is None else rope_positions)
    if kernel == "flex":
        span = (0, positions.shape[0])
        key_mask = None if padding_mask is None else padding_mask.bool()
        masks = {
            window: flex_mask(
                position,
                queries=span,
                keys=span,
                causal=causal,
                window=window,
                key_mask=key_mask,
                device=positions.device,
            )
            for window in windows
        }
        return AttentionContext(masks=masks, is_causal=causal, rope=rope, kernel=kernel)
    bias = position.score_bias(positions, positions, causal=causal)
    masks: dict[int | None, Tensor | None] = {}
    for window in windows:
        if window is None and padding_mask is None and bias is None:
            masks[window] = None  # the SDPA fast path (is_causal) needs no tensor
            continue
        allowed = _allowed(positions, positions, causal=causal, window=window, key_mask=padding_mask)
        masks[window] = allowed if bias is None else bias.masked_fill(~allowed, float("-inf"))
    return AttentionContext(masks=masks, is_causal=causal, rope=rope, kernel=kernel)


def cached_attention_context(
    position: Position,
    *,
    offset: int,
    length: int,
    positions: Tensor,
    key_mask: Tensor | None,
    windows: Iterable[int | None],
    kernel: str = "sdpa",
) -> AttentionContext:
    """Build the context of a causal stack that continues from a KV cache.

    The ``length`` new tokens are slots ``offset .. offset + length - 1`` and attend to the cached slots before them.
    No mask is built where none is needed: a one-token step without padding and score bias has none (a window is
    applied by ``key_start`` alone), and a first chunk without padding, bias or a binding window uses SDPA's
    ``is_causal``.

    Args:
        position: the stack's position block.
        offset: slots already filled; a 0-dim tensor for a :class:`StaticStackCache` (see :func:`static_context`).
        length: new tokens in this call.
        positions: ``[length]`` or ``[B, length]`` positions of the new tokens (for rotary tables).
        key_mask: ``[B, >= offset + length]`` True for slots holding real tokens, or ``None`` (no padding so far).
        windows: the sliding windows used by the stack's attention blocks (``None`` = global).
        kernel: the attention kernel (``sdpa``, ``flex`` or ``math``); ``flex`` gets :class:`FlexMask` masks. A
            :class:`StaticStackCache` (a compiled decode step) always gets dense masks (``math`` stays ``math``).
    """
    if isinstance(offset, Tensor):
        return static_context(
            position,
            offset=offset,
            length=length,
            positions=positions,
            key_mask=key_mask,
            windows=windows,
            kernel="math" if kernel == "math" else "sdpa",
        )
    end = offset + length
    # per window, the first slot any query of this call sees (the first query sees no earlier key)
    key_start = {w: 0 if w is None else max(0, offset + 1 - w) for w in windows}
    if kernel == "flex":
        masks = {
            window: flex_mask(
                position,
                queries=(offset, length),
                keys=(start, end - start),
                causal=True,
                window=window,
                key_mask=key_mask,
                device=positions.device,
            )
            for window, start in key_start.items()
        }
        return AttentionContext(
            masks=masks, rope=position.rotary(positions), offset=offset, key_start=key_start, kernel=kernel
        )
    q_pos = torch.arange(offset, end, device=positions.device)
    k_pos = torch.arange(end, device=positions.device)
    bias = position.score_bias(q_pos, k_pos, causal=True)
    plain = bias is None and key_mask is None
    masks: dict[int | None, Tensor | None] = {}
    for window, start in key_start.items():
        if plain and (length == 1 or (offset == 0 and (window is None or window >= length))):
            masks[window] = None
            continue
        keys = None if key_mask is None else key_mask[:, start:end]
        allowed = _allowed(q_pos, k_pos[start:], causal=True, window=window, key_mask=keys)
        masks[window] = allowed if bias is None else bias[..., start:].masked_fill(~allowed, float("-inf"))
    return AttentionContext(
        masks=masks,
        is_causal=offset == 0 and length > 1,  # SDPA's is_causal aligns the top-left corner: right only from slot 0
        rope=position.rotary(positions),
        offset=offset,
        key_start=key_start,
        kernel=kernel,
    )


def static_context(
    position: Position,
    *,
    offset: Tensor,
    length: int,
    positions: Tensor,
    key_mask: Tensor,
    windows: Iterable[int | None],
    kernel: str = "sdpa",
) -> AttentionContext:
    """The context of a causal stack that continues from a :class:`StaticStackCache`: the queries attend to every
    slot of the cache, and the masks (``[B, 1, length, max_len]``) hide the slots after each query, outside its window
    and holding padding. Built from tensors only, the same code for every token.

    Args:
        position: the stack's position block.
        offset: 0-dim tensor, the slots already filled.
        length: new tokens in this call.
        positions: ``[B, length]`` positions of the new tokens (for rotary tables).
        key_mask: ``[B, max_len]`` True for slots holding real tokens (those not yet filled are masked anyway).
        windows: the sliding windows used by the stack's attention blocks (``None`` = global).
        kernel: ``sdpa`` or ``math`` (dense masks).
    """
    q_pos = offset + torch.arange(length, device=key_mask.device)
    k_pos = torch.arange(key_mask.shape[1], device=key_mask.device)
    bias = position.score_bias(q_pos, k_pos, causal=True)
    masks: dict[int | None, Tensor | None] = {}
    for window in windows:
        allowed = _allowed(q_pos, k_pos, causal=True, window=window, key_mask=key_mask)
        masks[window] = allowed if bias is None else bias.masked_fill(~allowed, float("-inf"))
    return AttentionContext(
        masks=masks,
        rope=position.rotary(positions),
        offset=offset,
        key_start=dict.fromkeys(masks, 0),
        kernel=kernel,
    )


def memory_mask(padding_mask: Tensor | None, *, flex_queries: int | None = None) -> Tensor | FlexMask | None:
    """Cross-attention mask ``[B, 1, 1, Tk]`` from the encoder's ``[B, Tk]`` padding mask; with ``flex_queries``
    (the number of queries), the :class:`FlexMask` of it instead."""
    if flex_queries is not None:
        if padding_mask is None:
            return FlexMask()
        from torch.nn.attention.flex_attention import create_block_mask

        real = padding_mask.bool()

        def allowed(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return real[b, kv]

        return FlexMask(
            create_block_mask(allowed, real.shape[0], None, flex_queries, real.shape[1], device=real.device)
        )
    return None if padding_mask is None else padding_mask[:, None, None, :].bool()


# --------------------------------------------------------------------------------------------------- caches


class KVCache:
    """The keys and values of one self-attention block, preallocated for ``max_len`` slots and written in place.

    Attributes:
        k: ``[B, n_kv_heads, max_len, head_dim]`` (after qk-norm and rotary, as attention scores them).
        v: ``[B, n_kv_heads, max_len, head_dim]``.
    """

    def __init__(
        self, batch: int, n_kv_heads: int, head_dim: int, max_len: int, *, dtype: torch.dtype, device: Any
    ) -> None:
        self.k = torch.empty(batch, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)

    def update(self, k: Tensor, v: Tensor, offset: int | Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k, v`` ``[B, H_kv, T, hd]`` at slots ``offset ..``; return all filled slots ``[B, H_kv, offset + T, hd]``.

        With a 0-dim tensor ``offset`` (a :class:`StaticStackCache`), return every slot ``[B, H_kv, max_len, hd]``: the
        context's masks hide those not filled.
        """
        if isinstance(offset, Tensor):
            slots = offset + torch.arange(k.shape[2], device=k.device)
            self.k.index_copy_(2, slots, k)
            self.v.index_copy_(2, slots, v)
            return self.k, self.v
        end = offset + k.shape[2]
        self.k[:, :, offset:end] = k
        self.v[:, :, offset:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, index: Tensor, length: int | None) -> None:
        """Rows take the filled slots (``None``: all slots) of rows ``index`` ``[B]`` (beam search)."""
        if length is None:
            self.k.copy_(self.k[index])
            self.v.copy_(self.v[index])
            return
        self.k[:, :, :length] = self.k[index, :, :length]
        self.v[:, :, :length] = self.v[index, :, :length]


class MemoryKV:
    """The keys and values a cross-attention block projects from the encoder memory, computed once per sequence.

    Attributes:
        k: ``[B, n_kv_heads, S, head_dim]``, or ``None`` before the first call.
        v: ``[B, n_kv_heads, S, head_dim]``, or ``None`` before the first call.
    """

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def reorder(self, index: Tensor, length: int | None) -> None:
        """Rows take the memory of rows ``index`` ``[B]`` (beam search)."""
        if self.k is not None:
            self.k, self.v = self.k[index], self.v[index]


class StackCache:
    """What a causal stack remembers between calls while generating.

    Attributes:
        layers: per layer, the caches of its blocks that need one (in the layer's node order).
        max_len: slots allocated.
        length: slots filled so far (the offset of the next call's first token).
        key_mask: ``[B, max_len]`` True for slots holding real tokens; ``None`` until a call brings padding.
        next_position: ``[B]`` each row's next position; ``None`` until a call brings padding (then position and
            slot may differ).
    """

    def __init__(self, layers: list[list[Any]], max_len: int) -> None:
        self.layers = layers
        self.max_len = max_len
        self.length = 0
        self.key_mask: Tensor | None = None
        self.next_position: Tensor | None = None

    def positions(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        """Positions of the ``T`` new tokens of ``x`` ``[B, T, ...]``, recording their padding ``[B, T]`` (1 = token).

        ``[T]`` slots while no call brought padding; ``[B, T]`` afterwards, counting each row's real tokens.
        """
        batch, length = x.shape[:2]
        offset = self.length
        if offset + length > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} slots; {offset} are filled and {length} more came")
        if padding_mask is None and self.key_mask is None:
            return torch.arange(offset, offset + length, device=x.device)
        if self.key_mask is None:  # the first padded call: every earlier slot held a token
            self.key_mask = torch.ones(batch, self.max_len, dtype=torch.bool, device=x.device)
            self.next_position = torch.full((batch,), offset, dtype=torch.long, device=x.device)
        real = (
            torch.ones(batch, length, dtype=torch.bool, device=x.device)
            if padding_mask is None
            else padding_mask.bool()
        )
        self.key_mask[:, offset : offset + length] = real
        positions = self.next_position[:, None] + real.long().cumsum(1) - 1
        self.next_position = self.next_position + real.sum(1)
        return positions.clamp(min=0)  # leading padding sits at position 0 (it is masked anyway)

    def reorder(self, index: Tensor) -> None:
        """Row ``i`` continues from row ``index[i]`` (beam search keeps the best continuations)."""
        for entries in self.layers:
            for entry in entries:
                entry.reorder(index, self.length)
        if self.key_mask is not None:
            self.key_mask = self.key_mask[index]
            self.next_position = self.next_position[index]


class StaticStackCache(StackCache):
    """A :class:`StackCache` whose state is tensors of fixed shapes, for a decode step ``torch.compile`` captures.

    ``length`` is a 0-dim tensor (so a call reaches :func:`static_context` and :meth:`KVCache.update` writes at
    tensor slots), and ``key_mask`` and ``next_position`` exist from the start. Nothing checks that the cache has room
    (that would read a tensor on the host each step): the caller sizes it, as
    :class:`~tfgraph.decoding.session.Session` does.

    Args:
        cache: an empty cache of the stack (``model.new_cache(batch, max_len)``), whose block caches it takes.
        batch: its rows.
        device: where its tensors live.
    """

    def __init__(self, cache: StackCache, *, batch: int, device: torch.device | str) -> None:
        super().__init__(cache.layers, cache.max_len)
        for entries in self.layers:  # slots not yet filled are masked, but a NaN there would still reach 0 * NaN
            for entry in entries:
                if isinstance(entry, KVCache):
                    entry.k.zero_()
                    entry.v.zero_()
        self.length = torch.zeros((), dtype=torch.long, device=device)
        self.key_mask = torch.ones(batch, self.max_len, dtype=torch.bool, device=device)
        self.next_position = torch.zeros(batch, dtype=torch.long, device=device)

    def positions(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        """``[B, T]`` positions of the new tokens of ``x``, recording their padding ``[B, T]`` (1 = token)."""
        batch, length = x.shape[:2]
        real = (
            torch.ones(batch, length, dtype=torch.bool, device=x.device)
            if padding_mask is None
            else padding_mask.bool()
        )
        self.key_mask.index_copy_(1, self.length + torch.arange(length, device=x.device), real)
        positions = self.next_position[:, None] + real.long().cumsum(1) - 1
        self.next_position.add_(real.sum(1))
        return positions.clamp(min=0)

    def reorder(self, index: Tensor) -> None:
        """Row ``i`` continues from row ``index[i]`` (beam search keeps the best continuations)."""
        for entries in self.layers:
            for entry in entries:
                entry.reorder(index, None)
        self.key_mask.copy_(self.key_mask[index])
        self.next_position.copy_(self.next_position[index])
