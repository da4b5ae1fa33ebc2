"""Decoding: greedy, sampling (temperature, top-k, top-p, min-p) and beam search, with or without the KV cache.

    from tfgraph.decoding import generate
    out = generate(model, input_ids, max_new_tokens=32, strategy="sample", top_p=0.9, seed=0)
    out.sequences  # [B, N] new tokens

See :func:`generate`; the loops are in :mod:`tfgraph.decoding.search`, the score processing in
:mod:`tfgraph.decoding.logits`, and what feeds the model in :mod:`tfgraph.decoding.session`.
"""

from tfgraph.decoding.api import GenerateOutput, generate
from tfgraph.decoding.cpu import onednn_linear
from tfgraph.decoding.logits import min_p_filter, repetition_penalty, sampling_scores, top_k_filter, top_p_filter
from tfgraph.decoding.session import Session, left_padding_positions

__all__ = [
    "GenerateOutput",
    "Session",
    "generate",
    "left_padding_positions",
    "min_p_filter",
    "onednn_linear",
    "repetition_penalty",
    "sampling_scores",
    "top_k_filter",
    "top_p_filter",
]
