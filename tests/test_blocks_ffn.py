"""Feed-forward blocks against computations written out by hand."""

import math
import typing

import pytest
import torch

from tfgraph.blocks.ffn import ACTIVATIONS, MLP, Activation, GatedMLP, MixtureOfExperts
from tfgraph.registry import _REGISTRY, Problems, bind

D, FF = 8, 12

HAND = {
    "gelu": lambda h: 0.5 * h * (1 + torch.erf(h / math.sqrt(2))),
    "gelu_tanh": lambda h: 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3))),
    "relu": lambda h: torch.where(h > 0, h, torch.zeros_like(h)),
    "silu": lambda h: h / (1 + torch.exp(-h)),
}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registered_names_and_activations():
    assert _REGISTRY["ffn"]["mlp"] is MLP
    assert _REGISTRY["ffn"]["gated"] is GatedMLP
    assert _REGISTRY["ffn"]["moe"] is MixtureOfExperts
    assert set(ACTIVATIONS) == set(typing.get_args(Activation)) == set(HAND)


@pytest.mark.parametrize("activation", sorted(HAND))
def test_mlp_matches_formula(activation):
    torch.manual_seed(0)
    mlp = MLP(d_model=D, d_ff=FF, activation=activation).double()
    x = torch.randn(2, 3, D, dtype=torch.float64)
    h = x @ mlp.fc.weight.T + mlp.fc.bias
    expected = HAND[activation](h) @ mlp.proj.weight.T + mlp.proj.bias
    torch.testing.assert_close(mlp(x), expected, rtol=1e-10, atol=1e-10)


def test_mlp_parameter_counts():
    assert n_params(MLP(d_model=64, d_ff=256)) == 64 * 256 + 256 + 256 * 64 + 64
    assert n_params(MLP(d_model=64, d_ff=256, bias=False)) == 2 * 64 * 256


@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])  # SwiGLU, GEGLU, ReGLU
def test_gated_matches_formula(activation):
    torch.manual_seed(0)
    ffn = GatedMLP(d_model=D, d_ff=FF, activation=activation, bias=True).double()
    x = torch.randn(2, 3, D, dtype=torch.float64)
    w, b = ffn.gate_up.weight, ffn.gate_up.bias
    gate = x @ w[:FF].T + b[:FF]
    up = x @ w[FF:].T + b[FF:]
    expected = (HAND[activation](gate) * up) @ ffn.proj.weight.T + ffn.proj.bias
    torch.testing.assert_close(ffn(x), expected, rtol=1e-10, atol=1e-10)


def test_gated_parameter_counts():
    ffn = GatedMLP(d_model=64, d_ff=256)
    assert ffn.gate_up.weight.shape == (2 * 256, 64)
    assert n_params(ffn) == 64 * 2 * 256 + 256 * 64


def make_moe(**kwargs) -> MixtureOfExperts:
    torch.manual_seed(0)
    moe = MixtureOfExperts(d_model=D, d_ff=FF, **kwargs).double()
    with torch.no_grad():
        moe.router.weight.mul_(4)  # sharper routing: fewer near-ties between experts
    return moe


def brute_force(moe: MixtureOfExperts, x: torch.Tensor, top_k: int) -> torch.Tensor:
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            token = x[b, t]
            logits = moe.router.weight @ token
            probs = torch.exp(logits - logits.max())
            probs = probs / probs.sum()
            order = sorted(range(len(probs)), key=lambda e: -probs[e].item())[:top_k]
            total = sum(probs[e] for e in order)
            for e in order:
                out[b, t] += probs[e] / total * moe.experts[e](token[None])[0]
    return out


@pytest.mark.parametrize(("expert", "n_experts", "top_k"), [("gated", 4, 2), ("mlp", 4, 1), ("gated", 3, 3)])
def test_moe_matches_per_token_loop(expert, n_experts, top_k):
    moe = make_moe(n_experts=n_experts, top_k=top_k, expert=expert, bias=True)
    assert isinstance(moe.experts[0], {"mlp": MLP, "gated": GatedMLP}[expert])
    x = torch.randn(2, 5, D, dtype=torch.float64)
    torch.testing.assert_close(moe(x), brute_force(moe, x, top_k), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("expert", "n_experts", "top_k"), [("gated", 4, 2), ("mlp", 4, 1), ("gated", 3, 3)])
def test_moe_dense_dispatch_computes_the_sparse_output_and_gradients(expert, n_experts, top_k):
    x = torch.randn(2, 5, D, dtype=torch.float64, requires_grad=True)
    results = {}
    for dispatch in ("sparse", "dense"):
        moe = make_moe(n_experts=n_experts, top_k=top_k, expert=expert, dispatch=dispatch)
        out = moe(x)
        (grad_x,) = torch.autograd.grad(out.square().sum() + moe.aux_loss, x)
        results[dispatch] = (out, grad_x)
    torch.testing.assert_close(results["dense"][0], results["sparse"][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results["dense"][1], results["sparse"][1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        results["dense"][0],
        brute_force(make_moe(n_experts=n_experts, top_k=top_k, expert=expert), x.detach(), top_k),
        rtol=1e-10,
        atol=1e-10,
    )


def test_moe_auto_dispatch_is_dense_while_compiling_and_traces_whole():
    moe = make_moe(n_experts=4, top_k=2)
    x = torch.randn(2, 5, D, dtype=torch.float64)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(moe)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(moe, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), moe(x), rtol=1e-10, atol=1e-10)  # eager ran sparse


def test_moe_only_routed_tokens_reach_an_expert():
    moe = make_moe(n_experts=4, top_k=2)
    seen = []
    for expert in moe.experts:
        expert.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    moe(torch.randn(3, 7, D, dtype=torch.float64))
    assert len(seen) == 4 and sum(seen) == 3 * 7 * 2


def test_moe_aux_loss_matches_formula_and_has_router_gradient():
    n_experts, top_k = 4, 2
    moe = make_moe(n_experts=n_experts, top_k=top_k)
    x = torch.randn(2, 6, D, dtype=torch.float64)
    moe(x)
    tokens = x.reshape(-1, D)
    probs = torch.softmax(tokens @ moe.router.weight.T, dim=-1)
    counts = [0] * n_experts
    for p in probs:
        for e in sorted(range(n_experts), key=lambda e: -p[e].item())[:top_k]:
            counts[e] += 1
    expected = n_experts * sum(counts[e] / (len(tokens) * top_k) * probs[:, e].mean() for e in range(n_experts))
    assert moe.aux_loss.shape == ()
    torch.testing.assert_close(moe.aux_loss.double(), expected.detach(), rtol=1e-6, atol=1e-6)
    moe.aux_loss.backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_moe_aux_loss_is_larger_when_all_tokens_go_to_one_expert():
    n_experts = 4
    moe = make_moe(n_experts=n_experts, top_k=1)
    x = torch.rand(2, 8, D, dtype=torch.float64) + 0.5  # positive features
    with torch.no_grad():
        moe.router.weight.zero_()  # uniform router probabilities
    moe(x)
    uniform = moe.aux_loss.item()
    with torch.no_grad():
        moe.router.weight[0] = 10.0  # expert 0 wins every token
    moe(x)
    collapsed = moe.aux_loss.item()
    assert uniform == pytest.approx(1.0)
    assert collapsed > uniform
    assert collapsed == pytest.approx(n_experts, rel=1e-3)


@pytest.mark.parametrize("top_k", [0, 5])
def test_moe_rejects_bad_top_k(top_k):
    with pytest.raises(ValueError, match="top_k"):
        MixtureOfExperts(d_model=D, d_ff=FF, n_experts=4, top_k=top_k)


def test_moe_meta_dry_run_keeps_shape():
    with torch.device("meta"):
        moe = MixtureOfExperts(d_model=D, d_ff=FF, n_experts=4, top_k=2)
        y = moe(torch.empty(2, 3, D))
    assert y.shape == (2, 3, D) and y.is_meta and moe.aux_loss.shape == ()


def test_moe_binds_its_own_options():
    problems = Problems()
    kwargs = bind(
        MixtureOfExperts,
        {"n_experts": 4, "expert": "mlp"},
        context={"d_model": 8, "d_ff": 16, "n_heads": 2},
        path="model.ffn",
        problems=problems,
    )
    assert not problems
    defaults = {"top_k": 2, "activation": "silu", "bias": False, "dispatch": "auto"}
    assert kwargs == {"n_experts": 4, "expert": "mlp", "d_model": 8, "d_ff": 16, **defaults}
    bind(MixtureOfExperts, {"expert": "dense"}, context={"d_model": 8, "d_ff": 16}, path="model.ffn", problems=problems)
    assert [path for path, _ in problems.items] == ["model.ffn.expert"]
