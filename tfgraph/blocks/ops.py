"""Small parameter-free operations (kind ``op``) that layer graphs wire between blocks."""

from __future__ import annotations

from typing import Annotated

from torch import Tensor, nn

from tfgraph.registry import Finite, Probability, register


@register("op", "add")
class Add(nn.Module):
    """Elementwise sum of its inputs (a residual connection).

    Shapes:
        xs: one or more tensors of one shape (or broadcastable shapes) -> their sum.
    """

    def __init__(self) -> None:
        super().__init__()

    def forward(self, *xs: Tensor) -> Tensor:
        if not xs:
            raise TypeError("Add needs at least one input")
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        return y


@register("op", "scale")
class Scale(nn.Module):
    """Multiply by a constant.

    Args:
        value: the factor (finite).

    Shapes:
        x: any -> same shape.
    """

    def __init__(self, *, value: Annotated[float, Finite] = 1.0) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: Tensor) -> Tensor:
        return x * self.value

    def extra_repr(self) -> str:
        return f"value={self.value}"


@register("op", "dropout")
class Dropout(nn.Dropout):
    """Dropout (identity in eval mode); the model-level ``dropout`` reaches it by name.

    Args:
        dropout: probability of zeroing an element, in ``[0, 1)`` (survivors are scaled by ``1 / (1 - dropout)``).

    Shapes:
        x: any -> same shape.
    """

    def __init__(self, *, dropout: Annotated[float, Probability] = 0.0) -> None:
        super().__init__(p=dropout)
