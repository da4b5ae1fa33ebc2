"""Normalisation blocks (kind ``norm``): ``x [..., d_model] -> [..., d_model]``."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfgraph.registry import Positive, register


@register("norm", "layernorm")
class LayerNorm(nn.Module):
    """Layer normalisation (Ba et al. 2016) with an optional bias.

    ``y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias`` over the last dimension.

    Args:
        d_model: size of the normalised (last) dimension.
        eps: added to the variance; positive.
        bias: whether to learn an additive bias; ``False`` leaves no bias parameter at all.

    Shapes:
        x: ``[..., d_model]`` -> ``[..., d_model]``.
    """

    hf_layout = {"": "norm"}  # its weights as Hugging Face checkpoints hold them (tfgraph.interop)

    def __init__(self, *, d_model: int, eps: Annotated[float, Positive] = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.d_model = d_model
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(d_model))
        self.bias = nn.Parameter(torch.empty(d_model)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (self.d_model,), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}, bias={self.bias is not None}"


@register("norm", "rmsnorm")
class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Zhang & Sennrich 2019), as in T5 and Llama.

    ``y = x * rsqrt(mean(x^2) + eps) * weight`` over the last dimension, computed in float32 and cast
    back to the input's dtype (float64 inputs stay float64). T5's "bias-free RMS LayerNorm" is exactly this block.

    Args:
        d_model: size of the normalised (last) dimension.
        eps: added to the mean square; positive.

    Shapes:
        x: ``[..., d_model]`` -> ``[..., d_model]``.
    """

    hf_layout = {"": "norm"}  # its weights as Hugging Face checkpoints hold them (tfgraph.interop)

    def __init__(self, *, d_model: int, eps: Annotated[float, Positive] = 1e-6) -> None:
        super().__init__()
        self.d_model = d_model
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # float32, or float64 for float64 inputs
        return F.rms_norm(x32, (self.d_model,), self.weight.to(x32.dtype), self.eps).type_as(x)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"


@register("norm", "scalenorm")
class ScaleNorm(nn.Module):
    """ScaleNorm (Nguyen & Salazar 2019): rescale ``x`` to a learned length ``g``.

    ``y = g * x / max(||x||_2, eps)`` over the last dimension, with one scalar ``g`` initialised to
    ``sqrt(d_model)``.

    Args:
        d_model: size of the normalised (last) dimension; sets the initial ``g``.
        eps: lower bound on the norm; positive.

    Shapes:
        x: ``[..., d_model]`` -> ``[..., d_model]``.
    """

    def __init__(self, *, d_model: int, eps: Annotated[float, Positive] = 1e-5) -> None:
        super().__init__()
        self.d_model = d_model
        self.eps = eps
        self.g = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.g, math.sqrt(self.d_model))

    def forward(self, x: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=self.eps)
        return x * (self.g / norm)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"
