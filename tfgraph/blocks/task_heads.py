"""Task heads (kind ``head``) that the tasks put on a model's hidden states.

The language-model head of a generative model is part of the model (``model.head``, see
:mod:`tfgraph.blocks.heads`); these are the heads a task adds: BERT's masked-LM head and the classifiers.
A task's config names one (``task.head.block``); ``n_labels`` comes from the data's label names and the
model-level sizes (``d_model``, ``vocab_size``, ``dropout``) reach them by parameter name, as for any block.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfgraph.blocks.ffn import ACTIVATIONS, Activation
from tfgraph.registry import Positive, Probability, register


@register("head", "mlm_head")
class MaskedLMHead(nn.Module):
    """BERT's masked-LM head: ``decoder(norm(act(dense(x))))``.

    ``self.weight`` ``[vocab_size, d_model]`` may be replaced by the token embedding's table to tie them
    (``head.weight = embedding.weight``), as BERT does; the output bias is the head's own.

    Args:
        d_model: model width.
        vocab_size: number of token ids.
        activation: the transform's activation.
        eps: the layer norm's epsilon.

    Shapes:
        x: ``[B, T, d_model]`` -> logits ``[B, T, vocab_size]``.
    """

    def __init__(
        self, *, d_model: int, vocab_size: int, activation: Activation = "gelu", eps: Annotated[float, Positive] = 1e-12
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.act = ACTIVATIONS[activation]
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(self.act(self.dense(x)))
        return F.linear(h, self.weight, self.bias)


@register("head", "pooled_classifier")
class PooledClassifier(nn.Module):
    """BERT's sequence classifier: ``out(dropout(tanh(dense(x))))`` on one pooled vector per sequence.

    The task picks the vector (the first token's state for an encoder).

    Args:
        d_model: model width.
        n_labels: number of classes.
        dropout: dropout before the output layer.

    Shapes:
        x: ``[B, d_model]`` -> logits ``[B, n_labels]``.
    """

    def __init__(self, *, d_model: int, n_labels: int, dropout: Annotated[float, Probability] = 0.0) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, n_labels)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.drop(torch.tanh(self.dense(x))))


@register("head", "linear_classifier")
class LinearClassifier(nn.Module):
    """A linear classifier after dropout, for a pooled vector or for every token (tagging).

    Args:
        d_model: model width.
        n_labels: number of classes.
        dropout: dropout before the linear layer.
        bias: whether the linear layer has a bias.

    Shapes:
        x: ``[..., d_model]`` (``[B, d_model]`` or ``[B, T, d_model]``) -> logits ``[..., n_labels]``.
    """

    def __init__(
        self, *, d_model: int, n_labels: int, dropout: Annotated[float, Probability] = 0.0, bias: bool = True
    ) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, n_labels, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.drop(x))
