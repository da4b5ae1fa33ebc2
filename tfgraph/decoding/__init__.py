"""Decoding: greedy, sampling (temperature, top-k, top-p, min-p) and beam search, with or without the KV cache.

    from tfgraph.decoding import generate
    out = generate(model, input_ids, max_new_tokens=32, strategy="sample", top_p=0.9, seed=0)
    out.sequences  # [B, N] new tokens

See :func:`generate`; its settings are one table, :class:`DecodingOptions` (:mod:`tfgraph.decoding.options`: each
setting's default, the strategies it applies to and its checks), the loops are in :mod:`tfgraph.decoding.search`,
the score processing in :mod:`tfgraph.decoding.logits`, and what feeds the model in :mod:`tfgraph.decoding.session`.
:func:`choose_linear` picks the CPU kernel of the linear layers by timing (:mod:`tfgraph.decoding.cpu`).
:func:`generate_windowed` goes on past the model's context (:mod:`tfgraph.decoding.window`), and
:func:`generate_text` takes and returns text (:mod:`tfgraph.decoding.text`).
"""

from tfgraph.decoding.api import GenerateOutput, generate
from tfgraph.decoding.cpu import LinearChoice, choose_linear, onednn_linear
from tfgraph.decoding.logits import min_p_filter, repetition_penalty, sampling_scores, top_k_filter, top_p_filter
from tfgraph.decoding.options import DecodingOptions, check_settings
from tfgraph.decoding.session import Session, left_padding_positions, pad_prompts
from tfgraph.decoding.text import Completion, TextStreamer, generate_text
from tfgraph.decoding.window import generate_windowed

__all__ = [
    "Completion",
    "DecodingOptions",
    "GenerateOutput",
    "LinearChoice",
    "Session",
    "TextStreamer",
    "check_settings",
    "choose_linear",
    "generate",
    "generate_text",
    "generate_windowed",
    "left_padding_positions",
    "min_p_filter",
    "onednn_linear",
    "pad_prompts",
    "repetition_penalty",
    "sampling_scores",
    "top_k_filter",
    "top_p_filter",
]
