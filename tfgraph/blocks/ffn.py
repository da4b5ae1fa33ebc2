"""Feed-forward blocks (kind ``ffn``): ``x [B, T, d_model] -> [B, T, d_model]``.

They apply to each token on its own, so any leading dimensions work (``[..., d_model]``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tfgraph.registry import AtLeast, Probability, register

Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,  # exact (erf) GELU
    "gelu_tanh": partial(F.gelu, approximate="tanh"),  # GPT-2's tanh approximation
    "relu": F.relu,
    "silu": F.silu,  # a.k.a. swish
}


@register("ffn", "mlp")
class MLP(nn.Module):
    """The transformer's two-layer feed-forward network: ``proj(act(fc(x)))``.

    The layer graph adds residual dropout; ``activation_dropout`` is dropout on the hidden activations (T5's FFN
    dropout, BART's ``activation_dropout``).

    Args:
        d_model: model width (input and output size).
        d_ff: hidden width.
        activation: the nonlinearity, a key of :data:`ACTIVATIONS`.
        bias: whether both linear layers have a bias.
        activation_dropout: dropout probability on ``act(fc(x))`` before ``proj`` (training only), in ``[0, 1)``.

    Shapes:
        x: ``[B, T, d_model]`` -> ``[B, T, d_model]``.
    """

    hf_layout = {"fc": "up", "proj": "down"}  # its weights as Hugging Face checkpoints hold them (tfgraph.interop)

    def __init__(
        self,
        *,
        d_model: int,
        d_ff: int,
        activation: Activation = "gelu",
        bias: bool = True,
        activation_dropout: Annotated[float, Probability] = 0.0,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.fc = nn.Linear(d_model, d_ff, bias=bias)
        self.proj = nn.Linear(d_ff, d_model, bias=bias)
        self.hidden_dropout = nn.Dropout(activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.hidden_dropout(self.act(self.fc(x))))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


@register("ffn", "gated")
class GatedMLP(nn.Module):
    """Gated linear unit feed-forward (Shazeer 2020): ``proj(act(gate(x)) * up(x))``.

    SwiGLU is ``activation="silu"``, GEGLU ``"gelu"``, ReGLU ``"relu"``. ``gate`` and ``up`` are one fused
    ``gate_up`` linear layer whose output is ``[gate | up]`` (first ``d_ff`` features, then the next ``d_ff``).

    Args:
        d_model: model width (input and output size).
        d_ff: hidden width (of ``gate`` and of ``up`` each).
        activation: the nonlinearity applied to the gate, a key of :data:`ACTIVATIONS`.
        bias: whether the linear layers have a bias.
        activation_dropout: dropout probability on ``act(gate(x)) * up(x)`` before ``proj`` (training only), in
            ``[0, 1)``.

    Shapes:
        x: ``[B, T, d_model]`` -> ``[B, T, d_model]``.
    """

    # its weights as Hugging Face checkpoints hold them (tfgraph.interop): gate_up is gate and up stacked
    hf_layout = {"gate_up": ("gate", "up"), "proj": "down"}

    def __init__(
        self,
        *,
        d_model: int,
        d_ff: int,
        activation: Activation = "silu",
        bias: bool = False,
        activation_dropout: Annotated[float, Probability] = 0.0,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=bias)
        self.proj = nn.Linear(d_ff, d_model, bias=bias)
        self.hidden_dropout = nn.Dropout(activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.proj(self.hidden_dropout(self.act(gate) * up))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


@register("ffn", "moe")
class MixtureOfExperts(nn.Module):
    """Sparse mixture of feed-forward experts with top-k routing (Shazeer et al. 2017; Mixtral style).

    Each token's router probabilities ``p = softmax(router(x))`` pick its ``top_k`` experts; their weights
    are renormalised to sum to 1 and the output is the weighted sum of those experts' outputs. Only the
    tokens routed to an expert are computed by it.

    After each forward, ``self.aux_loss`` holds the load-balancing loss (Switch Transformer eq. 4, for
    top-k), a scalar a task adds to its loss::

        aux_loss = n_experts * sum_i f_i * P_i

    where ``f_i`` is the fraction of the ``N * top_k`` (token, slot) assignments routed to expert ``i`` and
    ``P_i`` the mean router probability of expert ``i`` over the ``N`` tokens. It is 1 when the load is
    uniform and ``n_experts`` when every token goes to one expert. Padding tokens are routed like any other.

    Dispatch: ``sparse`` gathers each expert's tokens (only they are computed; their number depends on the routing,
    which ``torch.compile`` cannot trace without a graph break and a GPU reads on the host); ``dense`` runs every
    expert on every token and weights the outputs by the routing weights, zero for the experts a token was not routed
    to: the same output in static shapes, at ``n_experts / top_k`` times the experts' FLOPs. ``auto`` is dense while
    ``torch.compile`` traces and sparse otherwise.

    Args:
        d_model: model width (input and output size).
        d_ff: hidden width of each expert.
        n_experts: number of experts.
        top_k: experts per token, ``1 <= top_k <= n_experts``.
        expert: the expert block, ``"mlp"`` (:class:`MLP`) or ``"gated"`` (:class:`GatedMLP`).
        activation: the experts' nonlinearity, a key of :data:`ACTIVATIONS`.
        bias: whether the experts' linear layers have a bias (the router never has one).
        dispatch: ``auto``, ``sparse`` or ``dense`` (above).

    Shapes:
        x: ``[B, T, d_model]`` -> ``[B, T, d_model]``; ``aux_loss``: ``[]`` (float32; float64 for float64 inputs).
    """

    aux_loss: Tensor  # declares the auxiliary loss (tfgraph.registry.BlockProtocol)

    def __init__(
        self,
        *,
        d_model: int,
        d_ff: int,
        n_experts: Annotated[int, AtLeast(1)] = 8,
        top_k: Annotated[int, AtLeast(1)] = 2,
        expert: Literal["mlp", "gated"] = "gated",
        activation: Activation = "silu",
        bias: bool = False,
        dispatch: Literal["auto", "sparse", "dense"] = "auto",
    ) -> None:
        super().__init__()
        self.dispatch = dispatch
        if n_experts < 1:
            raise ValueError(f"n_experts must be at least 1, got {n_experts}")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be between 1 and n_experts={n_experts}, got {top_k}")
        self.n_experts = n_experts
        self.top_k = top_k
        expert_cls = {"mlp": MLP, "gated": GatedMLP}[expert]
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(
            expert_cls(d_model=d_model, d_ff=d_ff, activation=activation, bias=bias) for _ in range(n_experts)
        )
        self.aux_loss = torch.zeros(())

    @staticmethod
    def check_args(*, n_experts: int, top_k: int, **_: Any) -> dict[str, str]:
        """A token cannot be routed to more experts than there are (see :func:`tfgraph.registry.bind`)."""
        if top_k > n_experts:
            return {"top_k": f"expected at most n_experts ({n_experts}) experts per token, got {top_k}"}
        return {}

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.reshape(-1, x.shape[-1])  # [N, d_model]
        logits = self.router(tokens)  # [N, E]
        probs = F.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))  # at least fp32
        weights, chosen = probs.topk(self.top_k, dim=-1)  # [N, k] each
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)

        # load balancing: f = share of assignments per expert (no gradient), P = mean probability per expert
        assigned = chosen[..., None] == torch.arange(self.n_experts, device=x.device)  # [N, k, E]
        f = assigned.to(probs.dtype).mean(dim=(0, 1))
        self.aux_loss = self.n_experts * (f * probs.mean(dim=0)).sum()

        if x.is_meta:  # a shape-only dry run has no router values to dispatch by
            return torch.empty_like(x)
        if self.dispatch == "dense" or (self.dispatch == "auto" and torch.compiler.is_compiling()):
            gates = (assigned.to(weights.dtype) * weights[..., None]).sum(dim=1)  # [N, E], 0 where not routed
            out = torch.zeros_like(tokens)
            for e, expert in enumerate(self.experts):
                out = out + (expert(tokens) * gates[:, e, None]).to(out.dtype)
            return out.view_as(x)

        # dispatch: each expert gathers its (token, slot) assignments, adds its weighted outputs back
        out = torch.zeros_like(tokens)
        flat_chosen, flat_weights = chosen.reshape(-1), weights.reshape(-1)  # [N * k]
        for e, expert in enumerate(self.experts):
            slots = (flat_chosen == e).nonzero(as_tuple=True)[0]  # positions in the flattened [N, k]
            idx = slots // self.top_k  # their token indices
            y = expert(tokens.index_select(0, idx)) * flat_weights.index_select(0, slots)[:, None]
            out.index_add_(0, idx, y.to(out.dtype))  # autocast may compute the experts in lower precision
        return out.view_as(x)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, top_k={self.top_k}, dispatch={self.dispatch}"
