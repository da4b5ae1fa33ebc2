"""Next-token score processing: repetition penalty, temperature, and the top-k, top-p and min-p filters.

Each function takes scores ``[B, V]`` and returns new ones; a filtered-out token gets ``-inf``. They follow the
definitions of Hugging Face's logits processors, so that settings carry over.
"""

from __future__ import annotations

import torch
from torch import Tensor


def repetition_penalty(scores: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Penalise tokens that already occur (CTRL, Keskar et al. 2019): divide a positive score, multiply a negative one.

    Args:
        scores: [B, V].
        seen: [B, V] boolean, True for tokens that occur in the row's sequence so far.
        penalty: > 0; above 1 discourages repetition, below 1 encourages it.
    """
    penalised = torch.where(scores > 0, scores / penalty, scores * penalty)
    return torch.where(seen, penalised, scores)


def top_k_filter(scores: Tensor, k: int) -> Tensor:
    """Keep the ``k`` highest scores of each row (and any tied with the k-th)."""
    k = min(k, scores.shape[-1])
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p_filter(scores: Tensor, p: float) -> Tensor:
    """Keep the nucleus (Holtzman et al. 2020): the fewest most likely tokens whose probabilities sum to at least ``p``.

    The most likely token is always kept.
    """
    sorted_scores, order = torch.sort(scores, dim=-1)  # ascending
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= 1 - p  # the unlikely tail whose total mass is at most 1 - p
    drop[..., -1] = False
    return scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def min_p_filter(scores: Tensor, min_p: float) -> Tensor:
    """Keep the tokens whose probability is at least ``min_p`` times the most likely one's (Nguyen et al. 2024)."""
    probs = scores.softmax(dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return scores.masked_fill(probs < threshold, float("-inf"))


def sampling_scores(
    scores: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> Tensor:
    """Temperature, then top-k, top-p and min-p (in Hugging Face's order): the scores to sample from, [B, V]."""
    if temperature != 1.0:
        scores = scores / temperature
    if top_k is not None:
        scores = top_k_filter(scores, top_k)
    if top_p is not None and top_p < 1.0:
        scores = top_p_filter(scores, top_p)
    if min_p is not None and min_p > 0.0:
        scores = min_p_filter(scores, min_p)
    return scores
