"""Norm blocks against formulas written out by hand."""

import math

import pytest
import torch

from tfgraph.blocks.norm import LayerNorm, RMSNorm, ScaleNorm
from tfgraph.registry import _REGISTRY, Problems, bind

D = 16


def randomise(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module


def test_registered_names():
    assert _REGISTRY["norm"]["layernorm"] is LayerNorm
    assert _REGISTRY["norm"]["rmsnorm"] is RMSNorm
    assert _REGISTRY["norm"]["scalenorm"] is ScaleNorm


def test_layernorm_matches_formula():
    torch.manual_seed(0)
    norm = randomise(LayerNorm(d_model=D, eps=1e-5)).double()
    x = torch.randn(2, 3, D, dtype=torch.float64) * 3 + 1
    mean = x.sum(-1, keepdim=True) / D
    var = ((x - mean) ** 2).sum(-1, keepdim=True) / D
    expected = (x - mean) / torch.sqrt(var + 1e-5) * norm.weight + norm.bias
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)


def test_layernorm_without_bias_has_no_bias_parameter():
    torch.manual_seed(0)
    norm = randomise(LayerNorm(d_model=D, bias=False)).double()
    assert [name for name, _ in norm.named_parameters()] == ["weight"]
    assert sum(p.numel() for p in norm.parameters()) == D
    x = torch.randn(4, D, dtype=torch.float64)
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    torch.testing.assert_close(norm(x), (x - mean) / torch.sqrt(var + 1e-5) * norm.weight)


def test_rmsnorm_matches_formula():
    torch.manual_seed(0)
    norm = randomise(RMSNorm(d_model=D, eps=1e-6)).double()
    x = torch.randn(2, 5, D, dtype=torch.float64) * 2
    ms = (x * x).sum(-1, keepdim=True) / D
    expected = x / torch.sqrt(ms + 1e-6) * norm.weight
    out = norm(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_rmsnorm_computes_in_float32_for_low_precision_inputs():
    torch.manual_seed(0)
    norm = randomise(RMSNorm(d_model=D))
    x = (torch.randn(3, D) * 50).bfloat16()
    xf = x.float()
    expected = (xf / torch.sqrt((xf * xf).mean(-1, keepdim=True) + 1e-6) * norm.weight).bfloat16()
    out = norm(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_scalenorm_matches_formula():
    torch.manual_seed(0)
    norm = ScaleNorm(d_model=D).double()
    assert norm.g.shape == () and norm.g.item() == pytest.approx(math.sqrt(D))
    with torch.no_grad():
        norm.g.fill_(1.7)
    x = torch.randn(2, 3, D, dtype=torch.float64)
    expected = 1.7 * x / torch.sqrt((x * x).sum(-1, keepdim=True))
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)
    assert sum(p.numel() for p in norm.parameters()) == 1


def test_scalenorm_clamps_tiny_norms():
    norm = ScaleNorm(d_model=4, eps=1e-2).double()
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1e-4, 0.0, 0.0, 0.0]], dtype=torch.float64)
    out = norm(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, 2.0 * x / 1e-2)  # g = sqrt(4) = 2, norm clamped to eps


def test_reset_parameters():
    for norm, expected in [
        (LayerNorm(d_model=D), {"weight": 1.0, "bias": 0.0}),
        (RMSNorm(d_model=D), {"weight": 1.0}),
        (ScaleNorm(d_model=D), {"g": math.sqrt(D)}),
    ]:
        randomise(norm)
        norm.reset_parameters()
        for name, p in norm.named_parameters():
            assert torch.all(p == torch.tensor(expected[name], dtype=p.dtype)), (type(norm).__name__, name)


def test_model_size_binds_by_name():
    problems = Problems()
    kwargs = bind(LayerNorm, {"bias": False}, context={"d_model": 8}, path="model.norm", problems=problems)
    assert not problems and kwargs == {"bias": False, "d_model": 8, "eps": 1e-5}
    bind(RMSNorm, {"eps": "small", "bais": 1}, context={"d_model": 8}, path="model.norm", problems=problems)
    assert [path for path, _ in problems.items] == ["model.norm.eps", "model.norm.bais"]
