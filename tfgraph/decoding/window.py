"""Generation that may run past the context: a window that slides when the sequence fills it.

A decoder-only model reads at most ``context`` tokens (its ``max_len``, or fewer: a causal LM trained on windows of
T tokens predicts well from at most T - 1). :func:`generate_windowed` is :func:`~tfgraph.decoding.generate` when the
prompt and the new tokens fit; when they do not, one prompt is continued in chunks: once the sequence holds
``context`` tokens, its last ``context // 2`` become the prompt of the next chunk (the cache of the rest is dropped,
so each chunk starts by re-reading its prompt). nanoGPT instead crops to the last ``block_size`` tokens at every
step, which re-reads the whole window for every token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from tfgraph.decoding.api import GenerateOutput, generate, random_generator, stop_tokens
from tfgraph.decoding.options import STEPWISE, DecodingOptions


def generate_windowed(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    max_new_tokens: int,
    context: int | None = None,
    streamer: Callable[[Tensor], None] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    **options: Any,
) -> GenerateOutput:
    """:func:`~tfgraph.decoding.generate`, continuing a decoder-only model's prompt past ``context`` if need be.

    Args:
        model: a tfgraph model (``decoder_only`` to run past the context; any generative one otherwise).
        input_ids: [B, T] as for :func:`~tfgraph.decoding.generate`; past the context, one row (B = 1).
        attention_mask: [B, T] or ``None``; past the context, the row's padding is dropped.
        max_new_tokens: the most tokens to generate per row.
        context: the most tokens a row may hold, prompt and new tokens together (the model reads all but the
            last); default and at most the model's ``max_len``.
        streamer: called with each step's new tokens, across the chunks.
        seed: sampling only: seeds one generator that every chunk draws from.
        generator: sampling only: the generator to draw with.
        **options: the other arguments of :func:`~tfgraph.decoding.generate` (``strategy``, ``temperature``,
            ``eos_token_id``, ...). Past the context: strategy ``greedy`` or ``sample`` and one sequence only; the
            repetition penalty then sees the current window only.

    Returns:
        A :class:`~tfgraph.decoding.GenerateOutput` (without scores when it ran in chunks).

    Raises:
        ValueError: the prompt and ``max_new_tokens`` exceed the context and the generation cannot run in chunks
            (an encoder-decoder, several rows, beam search, several sequences), or any setting
            :func:`~tfgraph.decoding.generate` refuses.
    """
    limit = model.max_len if context is None else min(context, model.max_len)
    needed = max_new_tokens + (input_ids.shape[1] if model.topology == "decoder_only" else 0)
    if needed <= limit or model.topology != "decoder_only":
        return generate(
            model,
            input_ids,
            attention_mask,
            max_new_tokens=max_new_tokens,
            streamer=streamer,
            seed=seed,
            generator=generator,
            **options,
        )
    chosen = DecodingOptions(max_new_tokens=max_new_tokens, **options)
    one_sequence = input_ids.shape[0] == 1 and chosen.num_return_sequences == 1
    if not one_sequence or chosen.strategy not in STEPWISE or limit < 2:
        raise ValueError(
            f"prompt length plus max_new_tokens ({needed}) exceeds the model's context ({limit} tokens); a "
            "generation that long runs in chunks of one sequence (one prompt, strategy 'greedy' or 'sample', "
            "num_return_sequences=1, a context of at least 2 tokens)"
        )
    if chosen.strategy == "sample" and generator is None:  # one generator for all the chunks
        generator, seed = random_generator(seed, None, input_ids.device), None
    row = input_ids[0] if attention_mask is None else input_ids[0][attention_mask[0].bool()]
    return _in_chunks(
        model, row, max_new_tokens, limit=limit, streamer=streamer, seed=seed, generator=generator, **options
    )


def _in_chunks(
    model: nn.Module, sequence: Tensor, max_new_tokens: int, *, limit: int, **options: Any
) -> GenerateOutput:
    """Continue one row (``sequence``: [T] its tokens) by ``max_new_tokens`` in chunks: each from the sequence's
    last ``limit // 2`` tokens once it holds ``limit`` (from all of it before), until the stop token or the end."""
    stop_ids = stop_tokens(options.get("eos_token_id"))
    new_tokens: list[Tensor] = []
    logits: list[Tensor] = []
    remaining = max_new_tokens
    while remaining > 0:
        window = sequence[-max(limit // 2, 1) :] if len(sequence) >= limit else sequence
        steps = min(remaining, limit - len(window))
        out = generate(model, window[None], max_new_tokens=steps, **options)
        chunk = out.sequences[0]
        new_tokens.append(chunk)
        if out.logits is not None:
            logits.append(out.logits)
        sequence = torch.cat((sequence, chunk))
        remaining -= len(chunk)
        if len(chunk) < steps or int(chunk[-1]) in stop_ids:
            break
    return GenerateOutput(sequences=torch.cat(new_tokens)[None], logits=torch.cat(logits, dim=1) if logits else None)
