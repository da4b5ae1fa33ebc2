"""Block options that Hugging Face families need, each against a computation written out here."""

from __future__ import annotations

import math

import pytest
import torch

from tfgraph.blocks.attention import CrossAttention, MultiHeadAttention
from tfgraph.blocks.context import Position, self_attention_context
from tfgraph.blocks.ffn import MLP, GatedMLP
from tfgraph.blocks.position import RotaryPosition
from tfgraph.registry import ConfigError

HEAD_DIM, BASE, MAX_LEN = 64, 500000.0, 64


def _unscaled(head_dim: int = HEAD_DIM, base: float = BASE) -> list[float]:
    return [base ** (-2 * i / head_dim) for i in range(head_dim // 2)]


def _rope(scaling: dict | None, *, max_len: int = MAX_LEN, base: float = BASE) -> RotaryPosition:
    return RotaryPosition(d_model=HEAD_DIM * 2, n_heads=2, max_len=max_len, base=base, scaling=scaling)


def _assert_tables(rope: RotaryPosition, inv_freq: list[float], attention_factor: float = 1.0) -> None:
    """cos/sin tables of the block against cos(p * f) and sin(p * f) for the expected frequencies f."""
    positions = torch.arange(rope.cos.shape[0], dtype=torch.float64)[:, None]
    angles = positions * torch.tensor(inv_freq, dtype=torch.float64)
    angles = torch.cat((angles, angles), dim=-1)
    torch.testing.assert_close(rope.cos.double(), angles.cos() * attention_factor, atol=2e-5, rtol=0)
    torch.testing.assert_close(rope.sin.double(), angles.sin() * attention_factor, atol=2e-5, rtol=0)


def test_rope_linear_divides_every_frequency():
    _assert_tables(_rope({"rope_type": "linear", "factor": 4.0}), [f / 4.0 for f in _unscaled()])


def test_rope_llama3_stretches_long_wavelengths_only():
    factor, low, high, original = 32.0, 1.0, 4.0, 8192
    expected = []
    for f in _unscaled():
        wavelength = 2 * math.pi / f
        if wavelength < original / high:
            expected.append(f)
        elif wavelength > original / low:
            expected.append(f / factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            expected.append((1 - smooth) * f / factor + smooth * f)
    assert any(e == f for e, f in zip(expected, _unscaled(), strict=True)) and any(
        e < f / 2 for e, f in zip(expected, _unscaled(), strict=True)
    )
    scaling = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": original,
    }
    _assert_tables(_rope(scaling), expected)
    _assert_tables(
        _rope({key: value for key, value in scaling.items() if key != "rope_type"} | {"type": "llama3"}), expected
    )  # older configs' key


@pytest.mark.parametrize("extra", [{}, {"beta_fast": 16, "beta_slow": 2, "attention_factor": 0.9}])
def test_rope_yarn_ramps_between_kept_and_interpolated(extra):
    factor, original, dim = 8.0, 4096, HEAD_DIM
    beta_fast, beta_slow = extra.get("beta_fast", 32), extra.get("beta_slow", 1)

    def dimension(turns):  # the pair index whose wavelength fits `turns` times in the original context
        return dim * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(BASE))

    low, high = max(math.floor(dimension(beta_fast)), 0), min(math.ceil(dimension(beta_slow)), dim - 1)
    expected = []
    for i, f in enumerate(_unscaled()):
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)  # 0: keep f, 1: f / factor
        expected.append(ramp * f / factor + (1 - ramp) * f)
    attention_factor = extra.get("attention_factor", 0.1 * math.log(factor) + 1)
    scaling = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original, **extra}
    _assert_tables(_rope(scaling), expected, attention_factor)


def test_rope_yarn_factor_defaults_to_the_context_ratio():
    scaling = {"rope_type": "yarn", "original_max_position_embeddings": 16}
    explicit = _rope({**scaling, "factor": MAX_LEN / 16})
    torch.testing.assert_close(_rope(scaling).cos, explicit.cos)


@pytest.mark.parametrize(
    ("scaling", "says"),
    [
        (
            {"rope_type": "dynamic", "factor": 2.0},
            "'dynamic' is not supported; supported: default, linear, llama3, yarn",
        ),
        ({"rope_type": "linear"}, "missing ['factor']"),
        ({"rope_type": "linear", "factor": 2.0, "facter": 1}, "unknown ['facter']"),
        ({"rope_type": "linear", "factor": -2.0}, "expected positive"),
        ({"rope_type": "linear", "factor": "x"}, "expected numbers for ['factor']"),
        (
            {
                "rope_type": "llama3",
                "factor": 8,
                "low_freq_factor": 4,
                "high_freq_factor": 1,
                "original_max_position_embeddings": 8192,
            },
            "low_freq_factor < high_freq_factor",
        ),
    ],
)
def test_rope_scaling_errors_name_the_problem(scaling, says):
    with pytest.raises(ConfigError, match="scaling") as err:
        _rope(scaling)
    assert says in str(err.value)


def test_rope_scaling_error_reported_at_its_config_path():
    import tfgraph

    cfg = tfgraph.compose(["model=llama_tiny", "model.position.scaling.rope_type=longrope"])
    with pytest.raises(ConfigError) as err:
        tfgraph.build_model(cfg.model)
    assert "model.position.scaling" in str(err.value) and "'longrope' is not supported" in str(err.value)


def test_llama_preset_is_llama_3_2():
    import tfgraph

    cfg = tfgraph.compose(["model=llama"])
    assert cfg.model.position.base == 500000.0
    assert dict(cfg.model.position.scaling) == {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }


def test_rope_inv_freq_matches_transformers():
    modeling_rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    from transformers import LlamaConfig

    from tfgraph.blocks.position import rope_frequencies

    cases = [
        {"rope_type": "linear", "factor": 4.0},
        {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096},
    ]
    for scaling in cases:
        config = LlamaConfig(
            hidden_size=HEAD_DIM * 2,
            num_attention_heads=2,
            max_position_embeddings=32768,
            rope_theta=BASE,
            rope_scaling=dict(scaling),
        )
        theirs, their_factor = modeling_rope_utils.ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, "cpu")
        ours, our_factor = rope_frequencies(HEAD_DIM, BASE, scaling, 32768)
        torch.testing.assert_close(ours, theirs.float(), rtol=1e-6, atol=0)
        assert our_factor == pytest.approx(their_factor)


@pytest.mark.parametrize(
    ("overrides", "shown"),
    [
        (["model=llama_tiny"], "scaling={'rope_type': 'llama3', 'factor': 32.0,"),
        (["model=llama_tiny", "+model.attention.qkv_bias=true"], "qkv_bias=True, out_bias=None"),
        (["model=llama_tiny", "model.head_dim=24"], "2 key/value heads, head_dim 24,"),
        (
            ["model=llama_tiny", "+model.attention.qk_norm=true", "+model.attention.qk_norm_eps=0.001"],
            "qk_norm_eps=0.001",
        ),
        (["model=t5_tiny", "+model.ffn.activation_dropout=0.1"], "activation_dropout=0.1"),
        (
            ["model=llama_tiny", "model/layer=parallel_neox"],
            "ffn: gated (ffn; activation=silu, bias=False, activation_dropout=0.0) <- norm2",
        ),
    ],
)
def test_show_lists_the_option(overrides, shown):
    import tfgraph
    from tfgraph.show import show

    assert shown in show(tfgraph.compose(overrides, config_name="show"))


def _randomised(block: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for p in block.parameters():  # biases and norm weights too, so that a forgotten one shows
        torch.nn.init.normal_(p, std=0.3)
    return block.double().eval()


def _direct_attention(x, wq, bq, wk, bk, wv, bv, wo, bo, *, n_heads, n_kv_heads, head_dim, qk_eps=None):
    """Causal multi-head attention written out: per-head projections, optional RMS qk-norm, softmax, output."""
    b, t, _ = x.shape

    def heads(w, bias, n):
        y = x @ w.T + (0 if bias is None else bias)
        return y.view(b, t, n, head_dim).transpose(1, 2)  # [B, n, T, hd]

    q, k, v = heads(wq, bq, n_heads), heads(wk, bk, n_kv_heads), heads(wv, bv, n_kv_heads)
    if qk_eps is not None:  # unit weights: the test leaves the norms' weights at one where it passes qk_eps
        q = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + qk_eps)
        k = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + qk_eps)
    group = n_heads // n_kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, n_heads * head_dim)
    return y @ wo.T + (0 if bo is None else bo)


def _run_self_attention(block, x):
    ctx = self_attention_context(Position(), torch.arange(x.shape[1]), causal=True)
    return block(x, ctx)


def _fused_parts(block):
    """The q, k, v weights and biases of a fused ``qkv`` projection, by rows."""
    q_rows, kv_rows = block.n_heads * block.head_dim, block.n_kv_heads * block.head_dim
    weights = block.qkv.weight.split([q_rows, kv_rows, kv_rows])
    biases = (None,) * 3 if block.qkv.bias is None else block.qkv.bias.split([q_rows, kv_rows, kv_rows])
    return weights, biases


@pytest.mark.parametrize(("qkv_bias", "out_bias"), [(True, False), (False, True), (None, None)])
def test_attention_biases_apart(qkv_bias, out_bias):
    block = _randomised(
        MultiHeadAttention(d_model=32, n_heads=4, n_kv_heads=2, bias=False, qkv_bias=qkv_bias, out_bias=out_bias)
    )
    assert (block.qkv.bias is not None) == bool(qkv_bias) and (block.out.bias is not None) == bool(out_bias)
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    (wq, wk, wv), (bq, bk, bv) = _fused_parts(block)
    expected = _direct_attention(
        x, wq, bq, wk, bk, wv, bv, block.out.weight, block.out.bias, n_heads=4, n_kv_heads=2, head_dim=8
    )
    torch.testing.assert_close(_run_self_attention(block, x), expected)


def test_cross_attention_biases_apart():
    block = CrossAttention(d_model=32, n_heads=4, qkv_bias=True, out_bias=False)
    assert block.q.bias is not None and block.kv.bias is not None and block.out.bias is None
    assert MultiHeadAttention(d_model=32, n_heads=4, bias=False).qkv.bias is None  # bias alone still means both


def test_head_dim_apart_from_d_model():
    block = _randomised(MultiHeadAttention(d_model=32, n_heads=4, n_kv_heads=2, head_dim=12))
    assert block.qkv.weight.shape == (4 * 12 + 2 * 2 * 12, 32) and block.out.weight.shape == (32, 48)
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    (wq, wk, wv), (bq, bk, bv) = _fused_parts(block)
    expected = _direct_attention(
        x, wq, bq, wk, bk, wv, bv, block.out.weight, block.out.bias, n_heads=4, n_kv_heads=2, head_dim=12
    )
    torch.testing.assert_close(_run_self_attention(block, x), expected)
    cross = CrossAttention(d_model=32, n_heads=4, head_dim=12)
    assert cross.q.weight.shape == (48, 32) and cross.kv.weight.shape == (96, 32) and cross.out.weight.shape == (32, 48)


def test_rope_takes_the_head_dim():
    rope = RotaryPosition(d_model=32, n_heads=4, head_dim=12, max_len=8, base=100.0)
    assert rope.cos.shape == (8, 12)
    _assert_tables(rope, [100.0 ** (-2 * i / 12) for i in range(6)])


@pytest.mark.parametrize("preset", ["llama_tiny", "t5_tiny"])
def test_model_head_dim_reaches_every_head_and_the_cache(preset):
    from tests.conftest import build
    from tfgraph.decoding import generate

    model = build([f"model={preset}", "model.head_dim=24", "model.init_std=0.1", "model.max_len=64"])
    attention = [m for m in model.modules() if isinstance(m, MultiHeadAttention | CrossAttention)]
    assert attention and all(m.head_dim == 24 for m in attention)
    prompt = torch.randint(0, 512, (2, 6), generator=torch.Generator().manual_seed(1))
    start = {"decoder_start_token_id": 0} if model.topology == "encoder_decoder" else {}
    kwargs = dict(max_new_tokens=6, output_logits=True, **start)
    cached = generate(model, prompt, use_cache=True, **kwargs)
    full = generate(model, prompt, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, full.sequences)
    torch.testing.assert_close(cached.logits, full.logits, rtol=0, atol=1e-5)


def test_head_dim_lifts_the_divisibility_of_d_model():
    import tfgraph

    with pytest.raises(ConfigError, match="or set model.head_dim"):
        tfgraph.build_model(tfgraph.compose(["model=llama_tiny", "model.n_heads=6", "model.n_kv_heads=2"]).model)
    model = tfgraph.build_model(
        tfgraph.compose(["model=llama_tiny", "model.n_heads=6", "model.n_kv_heads=2", "model.head_dim=16"]).model
    )
    assert {m.head_dim for m in model.modules() if isinstance(m, MultiHeadAttention)} == {16}


@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_qk_norm_eps(eps):
    block = _randomised(MultiHeadAttention(d_model=32, n_heads=4, qk_norm=True, qk_norm_eps=eps))
    block.q_norm.weight.data.fill_(1.0)
    block.k_norm.weight.data.fill_(1.0)
    x = torch.randn(2, 5, 32, dtype=torch.float64) * 0.3  # small activations, so that a large eps shows
    (wq, wk, wv), (bq, bk, bv) = _fused_parts(block)
    expected = _direct_attention(
        x, wq, bq, wk, bk, wv, bv, block.out.weight, block.out.bias, n_heads=4, n_kv_heads=4, head_dim=8, qk_eps=eps
    )
    torch.testing.assert_close(_run_self_attention(block, x), expected)
    assert CrossAttention(d_model=32, n_heads=4, qk_norm=True, qk_norm_eps=eps).k_norm.eps == eps


@pytest.mark.parametrize("gated", [False, True])
def test_ffn_activation_dropout(gated):
    p = 0.4
    cls = GatedMLP if gated else MLP
    block = _randomised(cls(d_model=16, d_ff=32, activation="relu", activation_dropout=p)).train()
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    torch.manual_seed(7)
    y = block(x)
    if gated:
        gate, up = (x @ block.gate_up.weight.T).chunk(2, dim=-1)
        hidden = gate.clamp(min=0) * up
    else:
        hidden = (x @ block.fc.weight.T + block.fc.bias).clamp(min=0)
    torch.manual_seed(7)  # the same draw of the dropout mask, on the hidden activations
    dropped = torch.nn.functional.dropout(hidden, p)
    expected = dropped @ block.proj.weight.T + (0 if block.proj.bias is None else block.proj.bias)
    torch.testing.assert_close(y, expected)
    zeros = (dropped == 0) & (hidden != 0)
    assert zeros.any() and torch.allclose(dropped[~zeros & (hidden != 0)], hidden[~zeros & (hidden != 0)] / (1 - p))
    block.eval()  # no dropout at evaluation
    torch.testing.assert_close(
        block(x), hidden @ block.proj.weight.T + (0 if block.proj.bias is None else block.proj.bias)
    )


@pytest.mark.parametrize("preset", ["llama_tiny", "t5_tiny"])
def test_parallel_neox_layer_has_two_norms(preset):
    from tests.conftest import build

    model = build([f"model={preset}", "model/layer=parallel_neox"])
    stack = model.decoder
    for p in stack.parameters():  # norm weights apart from one, so that one norm shared would show
        torch.nn.init.normal_(p, std=0.3)
    layer = stack.layers[0]
    assert layer.norm1 is not layer.norm2 and layer.norm1.weight.data_ptr() != layer.norm2.weight.data_ptr()
    x = torch.randn(2, 5, 64)
    ctx = self_attention_context(stack.position, torch.arange(5), causal=True)
    if model.topology == "encoder_decoder":
        memory = torch.randn(2, 4, 64)
        ctx.memory_mask = None
        cross = layer.cross(layer.norm3(x), memory, ctx)
        expected = x + layer.attn(layer.norm1(x), ctx) + cross + layer.ffn(layer.norm2(x))
        torch.testing.assert_close(layer(x, ctx, memory), expected)
    else:
        expected = x + layer.attn(layer.norm1(x), ctx) + layer.ffn(layer.norm2(x))
        torch.testing.assert_close(layer(x, ctx), expected)
