"""A batch of sequences being generated: feeds the model and returns next-token logits, whatever the topology.

:class:`Session` hides the difference between a decoder-only model (continue the prompt) and an encoder-decoder
(encode the source once; the decoder starts from a start token), and between decoding with the KV cache (feed
only the new token) and without it (re-run the whole sequence, the reference the cache is checked against).

With ``compile=True`` the cache is a :class:`~tfgraph.blocks.context.StaticStackCache` (its size rounded up to a
multiple of :data:`STATIC_SLOTS`, so that most generations reuse one compiled step) and each one-token step runs
through :func:`compiled_step`, one ``torch.compile(fullgraph=True)`` graph for every token; the prompt runs eagerly.

Compiling stays opt-in, not chosen automatically, because on the CPUs measured it pays back only over tens of
thousands of tokens, far more than one call generates. On the 2-core AMD EPYC (torch 2.13): ``gpt2_tiny``'s first
compiled call took 26.6 s with an empty Inductor cache and 3.9 s with a warm one, and then saved 0.071 ms of a
0.231 ms token (1.43x), so it pays back after some 54,000 tokens when warm, 375,000 when cold, while one call of
batch 1 generates at most its ``max_len`` of 256; GPT-2 small's steps, bound by streaming its weights from memory,
were no faster compiled (1.70x Hugging Face against 1.74x eager with oneDNN, 0.97x against 0.98x with PyTorch's
kernel) after a 4-5 s compile. A call cannot know how many more tokens its process will generate, and estimating the
gain would need the compile it is to avoid; a process that generates for long (a server) knows, and sets
``compile=True``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from tfgraph.blocks.context import StaticStackCache

STATIC_SLOTS = 64  # a static cache holds a multiple of this many slots


def pad_prompts(rows: Sequence[Sequence[int] | Tensor], pad_id: int, *, left: bool = True) -> tuple[Tensor, Tensor]:
    """Rows of token ids of different lengths as one batch: ``([B, T] ids, [B, T] mask)``, padded with ``pad_id``
    on the left (prompts a decoder continues) or on the right (sources of an encoder)."""
    rows = [torch.as_tensor(row, dtype=torch.long) for row in rows]
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long, device=rows[0].device)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        where = slice(length - len(row), length) if left else slice(0, len(row))
        ids[i, where] = row
        mask[i, where] = 1
    return ids, mask


def left_padding_positions(attention_mask: Tensor) -> Tensor:
    """Per-row positions of a left-padded batch: ``[B, T]``, counting each row's real tokens from 0."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


class Session:
    """The model state of one generation: a batch of rows, each a prompt (or source) and the tokens fed so far.

    ``first()`` reads the prompts (or the start token) and returns the next-token logits; each ``step(tokens)``
    feeds one more token per row and returns the logits after it; ``reorder(index)`` lets rows continue from other
    rows (beam search).

    Args:
        model: a tfgraph ``decoder_only`` or ``encoder_decoder`` model.
        input_ids: [B, T] prompts (decoder-only, left-padded) or sources (encoder-decoder).
        attention_mask: [B, T] 1 for tokens, 0 for padding, or ``None`` for none.
        max_new_tokens: how many tokens will be generated at most (sizes the cache).
        use_cache: keep a KV cache and feed only new tokens; otherwise re-run every fed token at each step.
        decoder_start_token_id: the decoder's first token (encoder-decoder only).
        expand: repeat every row this many times (beams or samples of one input); an encoder runs once per input.
        compile: run each one-token step as one compiled graph over a static cache (needs ``use_cache``).
    """

    def __init__(
        self,
        model: nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        *,
        max_new_tokens: int,
        use_cache: bool,
        decoder_start_token_id: int | None = None,
        expand: int = 1,
        compile: bool = False,
    ) -> None:
        if compile and not use_cache:
            raise ValueError("compile=True compiles the cached decode step: it needs use_cache=True")
        self.model = model
        self.device = input_ids.device
        self.steps, self.step_seconds = 0, 0.0  # one-token steps fed so far, and their wall time
        self.use_cache = use_cache
        self.compiled = compile
        self.encoder_decoder = model.topology == "encoder_decoder"
        if self.encoder_decoder:
            if decoder_start_token_id is None:
                raise ValueError("an encoder_decoder model needs decoder_start_token_id (its decoder's first token)")
            memory = model.encode(input_ids, attention_mask)
            self.memory = memory.repeat_interleave(expand, dim=0) if expand > 1 else memory
            self.memory_mask = None
            if attention_mask is not None:
                self.memory_mask = attention_mask.repeat_interleave(expand, dim=0) if expand > 1 else attention_mask
            batch = self.memory.shape[0]
            self.tokens = torch.full((batch, 1), decoder_start_token_id, dtype=torch.long, device=input_ids.device)
            self.mask = self.positions = None
            fed = max_new_tokens  # the start token and every generated token but the last
        else:
            if expand > 1:
                input_ids = input_ids.repeat_interleave(expand, dim=0)
                attention_mask = None if attention_mask is None else attention_mask.repeat_interleave(expand, dim=0)
            self.tokens = input_ids
            self.mask = attention_mask
            self.positions = None if attention_mask is None else left_padding_positions(attention_mask)
            fed = input_ids.shape[1] + max_new_tokens - 1
        batch = self.tokens.shape[0]
        if compile:
            slots = -(-fed // STATIC_SLOTS) * STATIC_SLOTS
            self.cache = StaticStackCache(model.new_cache(batch, slots), batch=batch, device=self.device)
        else:
            self.cache = model.new_cache(batch, fed) if use_cache else None

    def first(self) -> Tensor:
        """The next-token logits [B, V] after the prompt (or the start token)."""
        return self._logits(self.tokens, self.mask)

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row ([B]); the next-token logits [B, V]. Counts the steps and their wall time
        (``steps``, ``step_seconds``)."""
        began = time.perf_counter()
        logits = self._step(tokens)
        self.step_seconds += time.perf_counter() - began
        self.steps += 1
        return logits

    def _step(self, tokens: Tensor) -> Tensor:
        if self.compiled:
            memory = (self.memory, self.memory_mask) if self.encoder_decoder else (None, None)
            return compiled_step()(self.model, tokens, self.cache, *memory)
        tokens = tokens[:, None]
        if self.use_cache:
            return self._logits(tokens, None)
        self.tokens = torch.cat((self.tokens, tokens), dim=1)  # without a cache, every step re-reads them all
        if self.mask is not None:
            self.mask = torch.cat((self.mask, torch.ones_like(tokens)), dim=1)
            self.positions = torch.cat((self.positions, self.positions[:, -1:] + 1), dim=1)
        return self._logits(self.tokens, self.mask)

    def reorder(self, index: Tensor) -> None:
        """Row ``i`` continues from row ``index[i]`` ([B], beam search)."""
        if not self.use_cache:
            self.tokens = self.tokens[index]
        if self.mask is not None:
            self.mask, self.positions = self.mask[index], self.positions[index]
        if self.encoder_decoder:
            self.memory = self.memory[index]
            self.memory_mask = None if self.memory_mask is None else self.memory_mask[index]
        if self.cache is not None:
            self.cache.reorder(index)

    def _logits(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        if self.encoder_decoder:
            logits = self.model.decode(tokens, self.memory, self.memory_mask, cache=self.cache, logits_to_keep=1)
        elif self.use_cache:
            logits = self.model(tokens, mask, cache=self.cache, logits_to_keep=1)
        else:
            logits = self.model(tokens, mask, position_ids=self.positions, logits_to_keep=1)
        return logits[:, -1]


def cached_step(
    model: nn.Module, tokens: Tensor, cache: StaticStackCache, memory: Tensor | None, memory_mask: Tensor | None
) -> Tensor:
    """One decode step from a static cache: ``tokens`` [B] -> next-token logits [B, V] (a decoder-only model when
    ``memory`` is ``None``, else an encoder-decoder's decoder over ``memory`` [B, S, d_model])."""
    if memory is None:
        logits = model(tokens[:, None], None, cache=cache, logits_to_keep=1)
    else:
        logits = model.decode(tokens[:, None], memory, memory_mask, cache=cache, logits_to_keep=1)
    return logits[:, -1]


@functools.cache
def compiled_step() -> Callable[..., Tensor]:
    """:func:`cached_step` under ``torch.compile(fullgraph=True, dynamic=False)``, one for the process (its graphs
    are kept per model structure, batch and cache size)."""
    return torch.compile(cached_step, fullgraph=True, dynamic=False)
