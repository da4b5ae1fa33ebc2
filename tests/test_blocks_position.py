"""Position blocks against their formulas, written out independently in the test."""

from __future__ import annotations

import cmath
import math

import pytest
import torch

from tfgraph.blocks.context import Position
from tfgraph.blocks.position import (
    ALiBiPosition,
    LearnedPosition,
    NoPosition,
    RotaryPosition,
    SinusoidalPosition,
    T5RelativeBias,
    apply_rotary,
    t5_relative_bucket,
)
from tfgraph.registry import _REGISTRY


def test_registered():
    assert _REGISTRY["position"] == {
        "none": NoPosition,
        "learned": LearnedPosition,
        "sinusoidal": SinusoidalPosition,
        "rope": RotaryPosition,
        "alibi": ALiBiPosition,
        "t5_bias": T5RelativeBias,
    }
    assert all(issubclass(cls, Position) for cls in _REGISTRY["position"].values())


def test_none_encodes_nothing():
    none, x, pos = NoPosition(), torch.randn(2, 5, 8), torch.arange(5)
    assert none.embed(x, pos) is x
    assert none.rotary(pos) is None and none.score_bias(pos, pos, causal=True) is None
    assert not list(none.parameters())


# ------------------------------------------------------------------------------------------------ absolute


def test_learned_adds_the_table_row():
    block = LearnedPosition(max_len=16, d_model=8)
    x, pos = torch.randn(2, 5, 8), torch.tensor([3, 4, 5, 6, 7])
    y = block.embed(x, pos)
    for b in range(2):
        for t in range(5):
            torch.testing.assert_close(y[b, t], x[b, t] + block.table.weight[3 + t], rtol=0, atol=0)
    assert sum(p.numel() for p in block.parameters()) == 16 * 8
    assert list(block.state_dict()) == ["table.weight"]


@pytest.mark.parametrize("d_model", [8, 7])
def test_sinusoidal_table_matches_the_formula(d_model):
    block = SinusoidalPosition(max_len=50, d_model=d_model)
    for p in range(50):
        for i in range(d_model):
            angle = p / 10000 ** ((i - i % 2) / d_model)
            expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert block.table[p, i].item() == pytest.approx(expected, abs=2e-5), (p, i)
    assert not list(block.parameters()) and not block.state_dict()  # a non-persistent buffer
    x, pos = torch.randn(2, 4, d_model), torch.tensor([0, 1, 10, 49])
    torch.testing.assert_close(block.embed(x, pos), x + block.table[pos])
    assert block.embed(x.double(), pos).dtype == torch.float64


# ------------------------------------------------------------------------------------------------ rotary


def rotate_complex(x, positions, rot_dim, base):
    """Each pair (i, i + rot_dim/2) as a complex number times exp(1j * pos * base^(-2i/rot_dim))."""
    out = x.clone()
    half = rot_dim // 2
    for t, p in enumerate(positions.tolist()):
        for i in range(half):
            z = torch.complex(x[..., t, i], x[..., t, i + half])
            z = z * cmath.exp(1j * p * base ** (-2 * i / rot_dim))
            out[..., t, i], out[..., t, i + half] = z.real, z.imag
    return out


@pytest.mark.parametrize(("fraction", "rot_dim"), [(1.0, 16), (0.5, 8), (0.3, 4)])
def test_rotary_matches_complex_rotation(fraction, rot_dim):
    block = RotaryPosition(d_model=64, n_heads=4, max_len=40, base=500.0, fraction=fraction)
    assert block.rot_dim == rot_dim
    positions = torch.tensor([0, 1, 2, 7, 30, 39])
    cos, sin = block.rotary(positions)
    assert cos.shape == sin.shape == (6, rot_dim)
    x = torch.randn(2, 3, 6, 16, dtype=torch.float64)
    y = apply_rotary(x, cos, sin)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, rotate_complex(x, positions, rot_dim, 500.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y[..., rot_dim:], x[..., rot_dim:], rtol=0, atol=0)


def test_rotary_scores_depend_only_on_the_position_difference():
    block = RotaryPosition(d_model=32, n_heads=2, max_len=64, fraction=0.75)
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)

    def score(m, n):
        qm = apply_rotary(q.view(1, 1, 1, 16), *block.rotary(torch.tensor([m])))
        kn = apply_rotary(k.view(1, 1, 1, 16), *block.rotary(torch.tensor([n])))
        return (qm * kn).sum().item()

    assert score(5, 2) == pytest.approx(score(45, 42), abs=1e-4)
    assert score(2, 5) == pytest.approx(score(50, 53), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)
    assert score(3, 3) == pytest.approx((q * k).sum().item(), abs=1e-5)  # no rotation at distance 0


def test_rotary_validation_and_buffers():
    for fraction in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="fraction must be in"):
            RotaryPosition(d_model=32, n_heads=2, max_len=8, fraction=fraction)
    with pytest.raises(ValueError, match="no pair"):
        RotaryPosition(d_model=32, n_heads=2, max_len=8, fraction=0.1)  # int(1.6) = 1 -> 0
    with pytest.raises(ValueError, match="not divisible"):
        RotaryPosition(d_model=30, n_heads=4, max_len=8)
    block = RotaryPosition(d_model=32, n_heads=2, max_len=8)
    assert not list(block.parameters()) and not block.state_dict()


# ------------------------------------------------------------------------------------------------ alibi


def test_alibi_slopes():
    assert ALiBiPosition(n_heads=8).slopes.tolist() == [1 / 2**i for i in range(1, 9)]
    # 6 heads: the 4-head slopes 2^-2, 2^-4, 2^-6, 2^-8, then every other 8-head slope (2^-1, 2^-3, ...), 2 of them
    assert ALiBiPosition(n_heads=6).slopes.tolist() == [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]
    # 12 heads: the 8-head slopes, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 (every other 16-head slope)
    expected = [2.0**-i for i in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    assert ALiBiPosition(n_heads=12).slopes.tolist() == pytest.approx(expected, rel=1e-6)
    assert not ALiBiPosition(n_heads=8).state_dict()


def test_alibi_bias_values():
    block = ALiBiPosition(n_heads=4)  # slopes 1/4, 1/16, 1/64, 1/256
    q_pos, k_pos = torch.arange(3, 7), torch.arange(2, 8)
    for causal in (True, False):
        bias = block.score_bias(q_pos, k_pos, causal=causal)
        assert bias.shape == (1, 4, 4, 6) and bias.dtype == torch.float32
        for h, slope in enumerate([1 / 4, 1 / 16, 1 / 64, 1 / 256]):
            for i, qp in enumerate(q_pos.tolist()):
                for j, kp in enumerate(k_pos.tolist()):
                    distance = qp - kp if causal else abs(qp - kp)
                    assert bias[0, h, i, j].item() == -slope * distance


# ------------------------------------------------------------------------------------------------ T5


def bucket_by_loop(relative_position, bidirectional, num_buckets, max_distance):
    """HF T5's bucketing, one scalar at a time."""
    offset = 0
    if bidirectional:
        num_buckets //= 2
        if relative_position > 0:
            offset = num_buckets
        distance = abs(relative_position)
    else:
        distance = max(0, -relative_position)
    max_exact = num_buckets // 2
    if distance < max_exact:
        return offset + distance
    log_bucket = max_exact + int(
        math.log(distance / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return offset + min(log_bucket, num_buckets - 1)


def test_t5_buckets_hand_checked():
    rel = torch.tensor([0, -1, 1, -7, -8, -12, -20, -127, -128, -1000, 5, 200])
    # bidirectional, 32 buckets: 16 per direction, 8 exact; keys after the query (rel > 0) are offset by 16
    assert t5_relative_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128).tolist() == [
        0, 1, 17, 7, 8, 9, 10, 15, 15, 15, 21, 31,
    ]  # fmt: skip
    rel = torch.tensor([0, 5, 100, -5, -15, -16, -32, -64, -127, -1000])
    # causal: keys after the query count as distance 0; 16 exact buckets, 16 log-spaced ones up to 128
    assert t5_relative_bucket(rel, bidirectional=False, num_buckets=32, max_distance=128).tolist() == [
        0, 0, 0, 5, 15, 16, 21, 26, 31, 31,
    ]  # fmt: skip


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (16, 50), (8, 20)])
def test_t5_buckets_match_a_scalar_loop(bidirectional, num_buckets, max_distance):
    rel = torch.arange(-300, 301)
    got = t5_relative_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    expected = [bucket_by_loop(r, bidirectional, num_buckets, max_distance) for r in rel.tolist()]
    assert got.tolist() == expected


@pytest.mark.parametrize("causal", [True, False])
def test_t5_bias_looks_up_the_bucket_of_key_minus_query(causal):
    block = T5RelativeBias(n_heads=3, num_buckets=8, max_distance=20)
    assert list(block.state_dict()) == ["relative_attention_bias.weight"]
    assert block.relative_attention_bias.weight.shape == (8, 3)
    q_pos, k_pos = torch.arange(0, 30, 3), torch.arange(40)
    bias = block.score_bias(q_pos, k_pos, causal=causal)
    assert bias.shape == (1, 3, 10, 40)
    table = block.relative_attention_bias.weight
    for i, qp in enumerate(q_pos.tolist()):
        for j, kp in enumerate(k_pos.tolist()):
            bucket = bucket_by_loop(kp - qp, not causal, 8, 20)
            torch.testing.assert_close(bias[0, :, i, j], table[bucket], rtol=0, atol=0)
