"""Output heads (kind ``head``): hidden states -> task outputs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfgraph.registry import register


@register("head", "lm_head")
class LMHead(nn.Module):
    """Language-model head: hidden states -> logits over the vocabulary.

    ``self.weight`` ``[vocab_size, d_model]`` may be replaced by the token embedding's table to tie them
    (``head.weight = embedding.weight``).

    Args:
        d_model: model width.
        vocab_size: number of token ids.
        bias: whether to add a learned bias ``[vocab_size]`` to the logits.
        rescale: multiply ``x`` by ``d_model ** -0.5`` first (T5 with tied embeddings).

    Shapes:
        x: ``[B, T, d_model]`` -> logits ``[B, T, vocab_size]``.
    """

    hf_layout = {"": "head"}  # its weights as Hugging Face checkpoints hold them (tfgraph.interop)

    def __init__(self, *, d_model: int, vocab_size: int, bias: bool = False, rescale: bool = False) -> None:
        super().__init__()
        self.d_model = d_model
        self.vocab_size = vocab_size
        self.rescale = rescale
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        self.bias = nn.Parameter(torch.empty(vocab_size)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.d_model)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if self.rescale:
            x = x * self.d_model**-0.5
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.d_model}, {self.vocab_size}, bias={self.bias is not None}, rescale={self.rescale}"


@register("head", "pooler")
class Pooler(nn.Module):
    """BERT's pooler: ``tanh(dense(x[:, 0]))``, the first token's state as a summary of the sequence.

    Args:
        d_model: model width.

    Shapes:
        x: ``[B, T, d_model]`` -> ``[B, d_model]``.
    """

    def __init__(self, *, d_model: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x[:, 0]))
