"""Embedding blocks (kind ``embedding``): token ids ``[B, T]`` -> vectors ``[B, T, d_model]``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfgraph.registry import register


@register("embedding", "token")
class TokenEmbedding(nn.Module):
    """A lookup table of token vectors.

    The table is ``self.weight`` ``[vocab_size, d_model]`` so that a head can tie to it
    (``head.weight = embedding.weight``).

    Args:
        vocab_size: number of token ids.
        d_model: vector size.
        scale: multiply the vectors by ``sqrt(d_model)`` (Vaswani et al. 2017).

    Shapes:
        ids: ``[B, T]`` (long) -> ``[B, T, d_model]``.
    """

    hf_layout = {"": "table"}  # its weights as Hugging Face checkpoints hold them (tfgraph.interop)

    def __init__(self, *, vocab_size: int, d_model: int, scale: bool = False) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)  # nn.Embedding's default

    def forward(self, ids: Tensor) -> Tensor:
        x = F.embedding(ids, self.weight)
        return x * math.sqrt(self.d_model) if self.scale else x

    def extra_repr(self) -> str:
        return f"{self.vocab_size}, {self.d_model}, scale={self.scale}"
