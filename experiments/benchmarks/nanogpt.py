"""A hand-written GPT-2-style decoder in the manner of nanoGPT: the baseline tfgraph's ``gpt2`` is timed against.

Token embedding plus learned positions, pre-LN blocks (LayerNorm with bias, eps 1e-5), a fused ``qkv`` projection
with bias, causal ``F.scaled_dot_product_attention``, an output projection, a GELU (tanh) MLP with biases, a final
LayerNorm and a bias-free head tied to the token embedding. No dropout at all: the baseline is the leanest model
of this architecture, so whatever tfgraph spends beyond it is the cost of the graph.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention. x: [B, T, d_model] -> [B, T, d_model]."""

    def __init__(self, *, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.c_attn = nn.Linear(d_model, 3 * d_model)
        self.c_proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # [B, H, T, hd]
        k = k.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
        v = v.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, hd]
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    """Position-wise feed-forward: c_proj(gelu_tanh(c_fc(x))). x: [B, T, d_model] -> [B, T, d_model]."""

    def __init__(self, *, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(d_model, d_ff)
        self.c_proj = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """A pre-LN transformer block. x: [B, T, d_model] -> [B, T, d_model]."""

    def __init__(self, *, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model, eps=1e-5)
        self.attn = CausalSelfAttention(d_model=d_model, n_heads=n_heads)
        self.ln_2 = nn.LayerNorm(d_model, eps=1e-5)
        self.mlp = MLP(d_model=d_model, d_ff=d_ff)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """The whole decoder. idx: [B, T] token ids (T <= max_len) -> logits [B, T, vocab_size]."""

    def __init__(self, *, vocab_size: int, max_len: int, d_model: int, n_layers: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(max_len, d_model)
        self.h = nn.ModuleList(Block(d_model=d_model, n_heads=n_heads, d_ff=d_ff) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, eps=1e-5)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, idx: Tensor) -> Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


# tfgraph gpt2 parameter name -> this model's name (the head is tied to the embedding in both)
_NAME_MAP = [
    (r"^embedding\.weight$", r"wte.weight"),
    (r"^decoder\.position\.table\.weight$", r"wpe.weight"),
    (r"^decoder\.layers\.(\d+)\.norm1\.", r"h.\1.ln_1."),
    (r"^decoder\.layers\.(\d+)\.attn\.qkv\.", r"h.\1.attn.c_attn."),
    (r"^decoder\.layers\.(\d+)\.attn\.out\.", r"h.\1.attn.c_proj."),
    (r"^decoder\.layers\.(\d+)\.norm2\.", r"h.\1.ln_2."),
    (r"^decoder\.layers\.(\d+)\.ffn\.fc\.", r"h.\1.mlp.c_fc."),
    (r"^decoder\.layers\.(\d+)\.ffn\.proj\.", r"h.\1.mlp.c_proj."),
    (r"^decoder\.final_norm\.", r"ln_f."),
]


def tfgraph_name(name: str) -> str:
    """The name in this model of a tfgraph ``gpt2`` parameter; a name outside the map is an error."""
    for pattern, replacement in _NAME_MAP:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    raise KeyError(f"no nanoGPT counterpart for tfgraph parameter {name!r}")


@torch.no_grad()
def copy_from_tfgraph(gpt: GPT, tfgraph_model: nn.Module) -> None:
    """Copy every parameter of a tfgraph ``gpt2`` model into ``gpt``, checking that both sides are covered."""
    ours = dict(gpt.named_parameters())
    seen = set()
    for name, param in tfgraph_model.named_parameters():
        target = tfgraph_name(name)
        if ours[target].shape != param.shape:
            raise ValueError(f"{name} {list(param.shape)} does not fit {target} {list(ours[target].shape)}")
        ours[target].copy_(param)
        seen.add(target)
    missing = set(ours) - seen
    if missing:
        raise ValueError(f"parameters not copied from tfgraph: {sorted(missing)}")
