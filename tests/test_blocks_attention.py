"""Attention blocks against a direct softmax(Q K^T * scale + mask) V written out in the test."""

from __future__ import annotations

import math

import pytest
import torch

from tfgraph.blocks.attention import CrossAttention, MultiHeadAttention, SlidingWindowAttention
from tfgraph.blocks.context import AttentionContext, Position, memory_mask, self_attention_context
from tfgraph.blocks.position import ALiBiPosition, RotaryPosition
from tfgraph.registry import _REGISTRY, Problems, bind

D, H, T, B = 32, 4, 7, 2
HD = D // H


def make(cls=MultiHeadAttention, **kwargs):
    torch.manual_seed(0)
    block = cls(**{"d_model": D, "n_heads": H, **kwargs}).double().eval()
    for p in block.parameters():  # random norms and biases too, so that forgetting one shows
        torch.nn.init.normal_(p, std=0.3)
    return block


def inputs(t=T, b=B, seed=1):
    return torch.randn(b, t, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rms(x, weight):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight


def rotate_pairs(x, cos, sin):
    """Dimension i pairs with i + r/2 (r = cos.shape[-1]); the pair is rotated, the rest passes."""
    r = cos.shape[-1]
    out = x.clone()
    for i in range(r // 2):
        a, b = x[..., i], x[..., i + r // 2]
        out[..., i] = a * cos[:, i] - b * sin[:, i]
        out[..., i + r // 2] = b * cos[:, i] + a * sin[:, i]
    return out


def direct_attention(q, k, v, mask, scale):
    """q: [B, Tq, H, hd]; k, v: [B, Tk, H_kv, hd]; mask: None, bool or additive, broadcastable to [B, H, Tq, Tk]."""
    b, tq, h, hd = q.shape
    h_kv = k.shape[2]
    scale = 1 / math.sqrt(hd) if scale is None else scale
    heads = []
    for i in range(h):
        g = i // (h // h_kv)  # the kv head this query head shares
        scores = q[:, :, i] @ k[:, :, g].transpose(1, 2) * scale  # [B, Tq, Tk]
        if mask is not None:
            m = mask.expand(b, h, tq, k.shape[1])[:, i]
            scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m
        heads.append(torch.softmax(scores, dim=-1) @ v[:, :, g])
    return torch.cat(heads, dim=-1)  # [B, Tq, H * hd]


def direct_self_attention(block, x, mask, rope=None):
    """What ``block`` should compute, from its own weights (the fused qkv weight sliced by hand)."""
    b, t, _ = x.shape
    kv = block.n_kv_heads * HD
    w, bias = block.qkv.weight, block.qkv.bias
    bias = torch.zeros(D + 2 * kv, dtype=x.dtype) if bias is None else bias
    q = (x @ w[:D].T + bias[:D]).view(b, t, H, HD)
    k = (x @ w[D : D + kv].T + bias[D : D + kv]).view(b, t, -1, HD)
    v = (x @ w[D + kv :].T + bias[D + kv :]).view(b, t, -1, HD)
    if block.q_norm is not None:
        q, k = rms(q, block.q_norm.weight), rms(k, block.k_norm.weight)
    if rope is not None:
        cos, sin = rope
        q = rotate_pairs(q.transpose(1, 2), cos, sin).transpose(1, 2)
        k = rotate_pairs(k.transpose(1, 2), cos, sin).transpose(1, 2)
    y = direct_attention(q, k, v, mask, block.softmax_scale)
    return y @ block.out.weight.T + (0 if block.out.bias is None else block.out.bias)


def causal(t=T):
    return torch.ones(t, t, dtype=torch.bool).tril()


def banded(t, window):
    """Causal band: query i sees keys i - window < j <= i, written out element by element."""
    return torch.tensor([[i - window < j <= i for j in range(t)] for i in range(t)])


def padding(t=T):
    keep = torch.ones(B, t, dtype=torch.bool)
    keep[1, -3:] = False
    return keep[:, None, None, :]  # [B, 1, 1, Tk]


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("masking", ["causal", "causal_tensor", "bidirectional", "padding", "window"])
def test_self_attention_matches_direct_computation(n_kv_heads, masking):
    x = inputs()
    if masking == "window":
        block = make(SlidingWindowAttention, n_kv_heads=n_kv_heads, window=3)
        ctx, mask = AttentionContext(masks={3: banded(T, 3)}, is_causal=True), banded(T, 3)
    else:
        block = make(n_kv_heads=n_kv_heads)
        ctx, mask = {
            "causal": (AttentionContext(masks={None: None}, is_causal=True), causal()),  # SDPA's is_causal path
            "causal_tensor": (AttentionContext(masks={None: causal()}, is_causal=True), causal()),
            "bidirectional": (AttentionContext(masks={None: None}, is_causal=False), None),
            "padding": (AttentionContext(masks={None: padding()}, is_causal=False), padding()),
        }[masking]
    y = block(x, ctx)
    assert y.shape == (B, T, D)
    torch.testing.assert_close(y, direct_self_attention(block, x, mask), rtol=1e-10, atol=1e-10)


def test_masks_change_the_result():
    """Guards the test above against masks that happen not to matter."""
    block, x = make(n_kv_heads=2), inputs()
    full = block(x, AttentionContext())
    assert not torch.allclose(full, block(x, AttentionContext(is_causal=True)))
    assert not torch.allclose(full, block(x, AttentionContext(masks={None: padding()})))


def test_qk_norm_softmax_scale_and_no_bias():
    block, x = make(n_kv_heads=2, qk_norm=True, softmax_scale=0.7, bias=False), inputs()
    assert block.qkv.bias is None and block.out.bias is None
    assert block.q_norm.weight.shape == block.k_norm.weight.shape == (HD,)
    y = block(x, AttentionContext(is_causal=True))
    torch.testing.assert_close(y, direct_self_attention(block, x, causal()), rtol=1e-10, atol=1e-10)


def test_rotary_is_applied_to_queries_and_keys():
    block, x = make(n_kv_heads=2), inputs()
    angles = torch.arange(3, 3 + T, dtype=torch.float64)[:, None] * torch.tensor([1.0, 0.3, 0.01], dtype=torch.float64)
    angles = torch.cat((angles, angles), dim=-1)  # [T, 6]: partial rotary of the first 6 of 8 dims
    rope = (angles.cos(), angles.sin())
    y = block(x, AttentionContext(is_causal=True, rope=rope))
    torch.testing.assert_close(y, direct_self_attention(block, x, causal(), rope), rtol=1e-10, atol=1e-10)


def test_additive_float32_bias_is_cast_to_the_query_dtype():
    block, x = make(n_kv_heads=2), inputs()
    bias = torch.randn(1, H, T, T).masked_fill(~causal(), float("-inf"))  # float32, block in float64
    y = block(x, AttentionContext(masks={None: bias}, is_causal=True))
    torch.testing.assert_close(y, direct_self_attention(block, x, bias.double()), rtol=1e-10, atol=1e-10)


def test_parameter_counts():
    def count(block):
        return sum(p.numel() for p in block.parameters())

    d, hd = 64, 8  # 8 query heads, 2 kv heads
    qkv, out = d * (d + 2 * 2 * hd), d * d
    assert count(MultiHeadAttention(d_model=d, n_heads=8, n_kv_heads=2, bias=False)) == qkv + out == 10240
    assert count(MultiHeadAttention(d_model=d, n_heads=8, n_kv_heads=2)) == 10240 + (d + 2 * 2 * hd) + d
    assert count(MultiHeadAttention(d_model=d, n_heads=8, bias=False, qk_norm=True)) == 4 * d * d + 2 * hd
    assert count(MultiHeadAttention(d_model=d, n_heads=8, n_kv_heads=1, bias=False)) == d * (d + 2 * hd) + d * d
    assert count(CrossAttention(d_model=d, n_heads=8, n_kv_heads=2, bias=False)) == d * d + d * 2 * 2 * hd + d * d
    assert count(SlidingWindowAttention(d_model=d, n_heads=8, window=16, bias=False)) == 4 * d * d


def test_through_self_attention_context_causal():
    block, x = make(n_kv_heads=2), inputs()
    ctx = self_attention_context(Position(), torch.arange(T), causal=True)
    y = block(x, ctx)
    changed = x.clone()
    changed[:, 4] += 1.0
    y2 = block(changed, ctx)
    torch.testing.assert_close(y2[:, :4], y[:, :4], rtol=0, atol=0)
    assert (y2[:, 4:] - y[:, 4:]).abs().amax(-1).min() > 1e-6


def test_through_self_attention_context_sliding_window():
    window, t = 3, 10
    block, x = make(SlidingWindowAttention, window=window), inputs(t)
    ctx = self_attention_context(Position(), torch.arange(t), causal=True, windows=(None, window))
    y = block(x, ctx)
    torch.testing.assert_close(y, direct_self_attention(block, x, banded(t, window)), rtol=1e-10, atol=1e-10)
    for i in range(t):  # token i sees tokens i - 2, i - 1, i only
        for j in range(t):
            changed = x.clone()
            changed[:, j] += 1.0
            moved = (block(changed, ctx)[:, i] - y[:, i]).abs().max() > 1e-9
            assert moved == (i - window < j <= i), (i, j)


def test_through_self_attention_context_with_padding_and_alibi():
    block, x = make(), inputs()
    keep = torch.ones(B, T)
    keep[1, -3:] = 0
    ctx = self_attention_context(ALiBiPosition(n_heads=H), torch.arange(T), causal=True, padding_mask=keep)
    slopes = torch.tensor([2.0 ** (-8 * (h + 1) / H) for h in range(H)], dtype=torch.float64)
    q_minus_k = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    allowed = causal()[None, None] & (keep.bool()[:, None, None, :] | torch.eye(T, dtype=torch.bool))
    mask = (-slopes[:, None, None] * q_minus_k)[None].masked_fill(~allowed, float("-inf"))
    y = block(x, ctx)
    torch.testing.assert_close(y, direct_self_attention(block, x, mask), rtol=1e-10, atol=1e-10)
    changed = x.clone()
    changed[1, -3:] += 1.0  # padding must not reach the real tokens
    torch.testing.assert_close(block(changed, ctx)[1, :-3], y[1, :-3], rtol=0, atol=0)


def test_through_self_attention_context_with_rope():
    block, x = make(n_kv_heads=1), inputs()
    rope = RotaryPosition(d_model=D, n_heads=H, max_len=32, fraction=0.5)
    positions = torch.arange(5, 5 + T)
    ctx = self_attention_context(rope, positions, causal=True)
    angles = positions[:, None].double() * torch.tensor([1.0, 0.01], dtype=torch.float64)  # base^(-2i/4)
    angles = torch.cat((angles, angles), dim=-1)
    expected = direct_self_attention(block, x, causal(), (angles.cos(), angles.sin()))
    torch.testing.assert_close(block(x, ctx), expected, rtol=1e-6, atol=1e-6)  # the tables are float32


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_cross_attention_matches_direct_computation(n_kv_heads):
    block, x = make(CrossAttention, n_kv_heads=n_kv_heads), inputs(5)
    memory = inputs(T, seed=2)
    keep = torch.ones(B, T)
    keep[0, -2:] = 0
    ctx = AttentionContext(masks={None: None}, is_causal=True, memory_mask=memory_mask(keep))  # is_causal is ignored
    kv, b = block.n_kv_heads * HD, B
    wk, wv = block.kv.weight[:kv], block.kv.weight[kv:]
    bk, bv = block.kv.bias[:kv], block.kv.bias[kv:]
    q = (x @ block.q.weight.T + block.q.bias).view(b, 5, H, HD)
    k = (memory @ wk.T + bk).view(b, T, -1, HD)
    v = (memory @ wv.T + bv).view(b, T, -1, HD)
    y = direct_attention(q, k, v, keep.bool()[:, None, None, :], None) @ block.out.weight.T + block.out.bias
    out = block(x, memory, ctx)
    assert out.shape == (B, 5, D)
    torch.testing.assert_close(out, y, rtol=1e-10, atol=1e-10)
    changed = memory.clone()
    changed[0, -2:] += 1.0
    torch.testing.assert_close(block(x, changed, ctx)[0], out[0], rtol=0, atol=0)


def test_dropout_only_in_training():
    block, x = make(n_kv_heads=2, dropout=0.5), inputs()
    ctx = AttentionContext(is_causal=True)
    torch.testing.assert_close(block(x, ctx), block(x, ctx), rtol=0, atol=0)
    torch.testing.assert_close(block(x, ctx), direct_self_attention(block, x, causal()), rtol=1e-10, atol=1e-10)
    block.train()
    torch.manual_seed(0)
    assert not torch.allclose(block(x, ctx), block(x, ctx))


def test_invalid_sizes():
    with pytest.raises(ValueError, match="d_model=30 is not divisible by n_heads=4"):
        MultiHeadAttention(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="n_heads=4 is not divisible by n_kv_heads=3"):
        MultiHeadAttention(d_model=32, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="n_kv_heads=3"):
        CrossAttention(d_model=32, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="window must be positive"):
        SlidingWindowAttention(d_model=32, n_heads=4, window=0)


def test_registered_and_bindable():
    assert _REGISTRY["attention"]["multihead"] is MultiHeadAttention
    assert _REGISTRY["attention"]["sliding_window"] is SlidingWindowAttention
    assert _REGISTRY["attention"]["cross"] is CrossAttention
    sizes = {"d_model": 32, "n_heads": 4, "n_kv_heads": None, "dropout": 0.1, "vocab_size": 100}
    problems = Problems()
    kwargs = bind(
        SlidingWindowAttention, {"window": 8, "bias": False}, context=sizes, path="model.attention", problems=problems
    )
    assert not problems
    block = SlidingWindowAttention(**kwargs)
    assert (block.window, block.n_kv_heads, block.dropout, block.qkv.bias) == (8, 4, 0.1, None)
    assert MultiHeadAttention(d_model=32, n_heads=4).window is None
    bind(MultiHeadAttention, {"window": 8, "qk_norm": "yes"}, context=sizes, path="model.attention", problems=problems)
    assert [path for path, _ in problems.items] == ["model.attention.window", "model.attention.qk_norm"]
    assert MultiHeadAttention.needs == CrossAttention.needs == ("context", "cache")
