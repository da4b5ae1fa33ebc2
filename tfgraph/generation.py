"""Sampling from a generative model: a plain loop without a KV cache (every step re-reads the whole prefix).

Works for decoder-only models (continue ``ids``) and encoder-decoder models (``ids`` is the source, encoded
once; the decoder starts from ``decoder_start_id``). Temperature 0 is greedy decoding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def sample(
    model: nn.Module,
    ids: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    *,
    attention_mask: Tensor | None = None,
    decoder_start_id: int | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    max_context: int | None = None,
) -> Tensor:
    """Generate up to ``max_new_tokens`` tokens after a prompt (or, for encoder-decoders, for a source).

    The (decoder's) context is cropped to its last ``max_context`` tokens, as nanoGPT does. Rows of a batch are
    continued together, so their prompts must have one length (no padding in ``ids``).

    Args:
        model: a tfgraph model (``decoder_only`` or ``encoder_decoder``), in eval mode.
        ids: ``[B, T]`` prompt (decoder-only) or source (encoder-decoder) token ids.
        max_new_tokens: how many tokens to generate at most.
        temperature: divides the logits; 0 picks the most likely token (greedy).
        top_k: sample among the k most likely tokens only (``None``: all).
        attention_mask: ``[B, T]`` source padding mask (encoder-decoder only).
        decoder_start_id: the first decoder token (encoder-decoder only; usually ``<bos>``).
        eos_id: stop a row after it produced this token (later positions repeat it); stop early when
            every row has.
        generator: the random generator for sampling.
        max_context: the longest context the model reads (default: its ``max_len``); a model trained on
            windows of T tokens predicts well from at most T - 1.

    Returns:
        The generated ids ``[B, N]``, ``N <= max_new_tokens`` (the prompt not included).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    context = min(max_context or model.spec.sizes["max_len"], model.spec.sizes["max_len"])
    batch = ids.shape[0]
    if model.topology == "encoder_decoder":
        if decoder_start_id is None:
            raise ValueError("an encoder_decoder model needs decoder_start_id (the first decoder token)")
        memory = model.encode(ids, attention_mask)
        seq = torch.full((batch, 1), decoder_start_id, dtype=torch.long, device=ids.device)

        def next_logits(seq: Tensor) -> Tensor:
            return model.decode(seq[:, -context:], memory, attention_mask)[:, -1]

    elif model.topology == "decoder_only":
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("decoder_only sampling continues unpadded prompts: give rows of one length")
        seq = ids

        def next_logits(seq: Tensor) -> Tensor:
            return model(seq[:, -context:])[:, -1]

    else:
        raise ValueError(f"cannot sample from an {model.topology} model; it has no language-model head")

    start = seq.shape[1]
    done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        logits = next_logits(seq).float()
        token = _pick(logits, temperature, top_k, generator)
        if eos_id is not None:
            token = torch.where(done, torch.full_like(token, eos_id), token)
            done |= token == eos_id
        seq = torch.cat([seq, token[:, None]], dim=1)
        if eos_id is not None and bool(done.all()):
            break
    return seq[:, start:]


def _pick(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> Tensor:
    """logits: [B, vocab] -> token ids [B]."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
