"""The attention backends (``model.attention_backend``: sdpa, flex, math, auto) compute the same thing.

Every backend is compared with the math reference (scores, mask and softmax written out) for every preset and every
position scheme, with padding, for grouped heads and sliding windows, and while generating with the KV cache.
FlexAttention runs unfused here (``kernels.COMPILE_FLEX`` off: the same numbers without compiling for every shape);
one slow test compiles it. On CPU FlexAttention has no backward pass, so gradients are compared for SDPA only and
flex's refusal to train on CPU is tested.
"""

from __future__ import annotations

import types

import pytest
import torch
from torch.profiler import profile

import tfgraph
from tests.conftest import TINY_PRESETS, build, group_options, run
from tfgraph.blocks import kernels
from tfgraph.config import ConfigError
from tfgraph.decoding import generate
from tfgraph.models.transformer import Stack

POSITIONS = group_options("position")
BACKENDS = ("sdpa", "flex")  # each against math
STD = ["model.init_std=0.1", "model.max_len=64", "model.dropout=0.0"]
VARIANTS = {  # what else changes the masks: grouped key/value heads, sliding windows (bounded below the sequence)
    "gqa": ["model.n_kv_heads=2"],
    "window": ["model/attention=sliding_window", "model.attention.window=3", "model.n_kv_heads=2"],
}
ATOL = 2e-5
pytestmark = [
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),  # COMPILE_FLEX off
    pytest.mark.usefixtures("one_thread"),  # tests/conftest.py
]


@pytest.fixture(autouse=True)
def unfused_flex(monkeypatch):
    monkeypatch.setattr(kernels, "COMPILE_FLEX", False)


def set_backend(model: torch.nn.Module, backend: str) -> None:
    for module in model.modules():
        if isinstance(module, Stack):
            module.attention_backend = backend


def padded_batch(model, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two rows of 9 tokens, the second right-padded after 5 (and the decoder's, for an encoder-decoder, after 4)."""
    g = torch.Generator().manual_seed(seed)
    batch = {
        "input_ids": torch.randint(0, 500, (2, 9), generator=g),
        "attention_mask": torch.ones(2, 9, dtype=torch.long),
    }
    batch["attention_mask"][1, 5:] = 0
    if model.topology == "encoder_decoder":
        batch["decoder_input_ids"] = torch.randint(0, 500, (2, 7), generator=g)
        batch["decoder_attention_mask"] = torch.ones(2, 7, dtype=torch.long)
        batch["decoder_attention_mask"][1, 4:] = 0
    return batch


def forward(model, batch, backend):
    set_backend(model, backend)
    with torch.no_grad():
        return model(**batch)


CASES = [(preset, position, "") for preset in TINY_PRESETS for position in POSITIONS] + [
    (preset, position, variant)
    for preset in ("llama_tiny", "t5_tiny")
    for position in ("rope", "alibi", "t5_bias")
    for variant in VARIANTS
]


@pytest.mark.parametrize(
    ("preset", "position", "variant"), CASES, ids=[f"{p}-{q}{'-' + v if v else ''}" for p, q, v in CASES]
)
def test_every_backend_equals_the_math_reference(preset, position, variant):
    """With padding, every output position (padded ones included) equals the math reference's."""
    model = build([f"model={preset}", f"model/position={position}", *STD, *VARIANTS.get(variant, [])])
    batch = padded_batch(model)
    reference = forward(model, batch, "math")
    for backend in BACKENDS:
        torch.testing.assert_close(forward(model, batch, backend), reference, rtol=0, atol=ATOL, msg=backend)


GENERATION = [(p, q) for p in ("gpt2_tiny", "llama_tiny") for q in POSITIONS] + [
    ("t5_tiny", "t5_bias"),
    ("t5_tiny", "alibi"),
    ("transformer_tiny", "sinusoidal"),
]


@pytest.mark.parametrize(("preset", "position"), GENERATION, ids=[f"{p}-{q}" for p, q in GENERATION])
def test_generation_with_the_cache_equals_the_math_reference(preset, position):
    """Greedy tokens and per-step logits with the KV cache, for left-padded prompts (a padded source for an
    encoder-decoder), on each backend, equal the math reference's without the cache; llama_tiny also runs past a
    sliding window."""
    window = ["model/attention=sliding_window", "model.attention.window=4"] if preset == "llama_tiny" else []
    model = build([f"model={preset}", f"model/position={position}", *STD, *window])
    tokens = torch.randint(0, 500, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 6, dtype=torch.long)
    if model.topology == "encoder_decoder":
        mask[1, 4:] = 0  # a source padded at its end
        options = {"decoder_start_token_id": 0}
    else:
        mask[1, :2] = 0  # a prompt padded on the left
        options = {}
    set_backend(model, "math")
    reference = generate(
        model, tokens, mask, max_new_tokens=7, use_cache=False, output_logits=True, cpu_linear="pytorch", **options
    )
    for backend in BACKENDS:
        set_backend(model, backend)
        result = generate(model, tokens, mask, max_new_tokens=7, output_logits=True, cpu_linear="pytorch", **options)
        assert torch.equal(result.sequences, reference.sequences), backend
        torch.testing.assert_close(result.logits, reference.logits, rtol=0, atol=ATOL, msg=backend)


@pytest.mark.parametrize("position", ["alibi", "t5_bias", "rope"])
def test_sdpa_gradients_equal_the_math_reference(position):
    """A training forward and backward (padding, dropout off) on SDPA gives the math reference's gradients."""
    model = build(["model=llama_tiny", f"model/position={position}", "model.n_kv_heads=2", *STD]).train()
    batch = padded_batch(model)
    grads = {}
    for backend in ("math", "sdpa"):
        set_backend(model, backend)
        model.zero_grad()
        run(model, batch["input_ids"], batch["attention_mask"]).square().mean().backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["math"].keys() == grads["sdpa"].keys() and grads["math"]
    for name, grad in grads["math"].items():
        torch.testing.assert_close(grads["sdpa"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_flex_refuses_to_train_on_cpu_with_a_clear_error():
    model = build(["model=gpt2_tiny", "model/position=alibi", "model.attention_backend=flex", *STD]).train()
    with pytest.raises(RuntimeError, match="no backward pass on CPU.*attention_backend=auto"):
        model(torch.randint(0, 500, (1, 8)))


def test_flex_refuses_attention_dropout_while_training():
    model = build(["model=gpt2_tiny", "model.attention_backend=flex", "model.dropout=0.1"]).train()
    with torch.no_grad(), pytest.raises(RuntimeError, match="no attention dropout"):
        model(torch.randint(0, 500, (1, 8)))
    model.eval()
    with torch.no_grad():
        model(torch.randint(0, 500, (1, 8)))  # evaluation drops nothing: flex serves


def fake_input(device: str) -> types.SimpleNamespace:
    """What Stack.kernel reads of its input: the device (a CUDA one need not exist to test the rule)."""
    return types.SimpleNamespace(device=torch.device(device))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model/position=alibi"], "flex"),
        (["model/position=t5_bias"], "flex"),
        (["model/attention=sliding_window", "model.attention.window=16"], "flex"),
        (["model/position=learned"], "sdpa"),  # no bias, no window: SDPA's flash kernel
        (["model/position=rope"], "sdpa"),
    ],
)
def test_auto_takes_flex_on_cuda_for_biases_and_windows_only(overrides, expected):
    model = build(["model=gpt2_tiny", *STD, *overrides])
    stack = model.decoder
    assert stack.attention_backend == "auto"
    assert stack.kernel(fake_input("cuda"), None) == expected
    # the CPU's fused SDPA takes masks; flex there would run unfused or compile for every shape
    assert stack.kernel(fake_input("cpu"), None) == "sdpa"
    assert stack.kernel(fake_input("cuda"), object()) == "sdpa"  # a cached step: one query row, SDPA


def test_auto_keeps_sdpa_for_training_with_attention_dropout():
    model = build(["model=gpt2_tiny", "model/position=alibi", "model.dropout=0.1"])
    assert model.decoder.kernel(fake_input("cuda"), None) == "flex"  # eval: nothing dropped
    model.train()
    assert model.decoder.kernel(fake_input("cuda"), None) == "sdpa"


def test_explicit_backends_are_kept_and_a_wrong_one_names_its_key():
    for backend in ("sdpa", "flex", "math"):
        model = build(["model=gpt2_tiny", f"model.attention_backend={backend}"])
        assert model.decoder.kernel(fake_input("cuda"), None) == backend
    with pytest.raises(ConfigError, match=r"model\.attention_backend.*auto, sdpa, flex, math.*'fast'"):
        tfgraph.build_model(tfgraph.compose(["model=gpt2_tiny", "model.attention_backend=fast"]).model)


def sdpa_ops(q, k, v, mask) -> set[str]:
    with profile() as prof:
        kernels.sdpa_attention(q, k, v, mask)
    return {event.key for event in prof.key_averages()}


def test_gqa_with_a_mask_stays_on_a_fused_kernel():
    """On CPU SDPA's fused flash kernel takes a mask and grouped heads together (no math fallback); on CUDA, where
    the fused kernels that take a mask take no grouped heads, the heads are repeated first."""
    q, k = torch.randn(2, 4, 16, 8), torch.randn(2, 2, 16, 8)
    mask = torch.ones(2, 1, 16, 16, dtype=torch.bool).tril()
    ops = sdpa_ops(q, k, k, mask)
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops and "aten::_softmax" not in ops
    cuda = types.SimpleNamespace(shape=q.shape, device=torch.device("cuda"))
    assert kernels.repeats_kv_for_mask(cuda, k, mask)
    assert not kernels.repeats_kv_for_mask(cuda, k, None)  # no mask: the flash kernel takes enable_gqa
    assert not kernels.repeats_kv_for_mask(cuda, q, mask)  # no grouping
    assert not kernels.repeats_kv_for_mask(q, k, mask)  # CPU


def test_flex_skips_blocks_outside_a_sliding_window():
    """The block mask of a long causal window is sparse: whole blocks far from the diagonal are never computed."""
    model = build(
        ["model=llama_tiny", "model/attention=sliding_window", "model.attention.window=128", "model.max_len=1024"]
    )
    from tfgraph.blocks.context import flex_mask

    mask = flex_mask(
        model.decoder.position, queries=(0, 1024), keys=(0, 1024), causal=True, window=128, key_mask=None, device="cpu"
    )
    assert mask.block_mask.sparsity() > 75  # of 8 x 8 blocks of 128, 15 are computed
    assert mask.score_mod is None  # rope adds no score bias


def test_attention_maps_record_under_every_backend():
    model = build(["model=gpt2_tiny", "model/position=alibi", "model.attention_backend=flex", *STD])
    from tfgraph.attention_maps import attention_weights

    weights = attention_weights(model, torch.randint(0, 500, (1, 6)))
    assert weights and all(torch.allclose(w.sum(-1), torch.ones(())) for w in weights.values())
    assert model.decoder.attention_backend == "flex"  # restored after recording


@pytest.mark.slow
@pytest.mark.parametrize("position", ["alibi", "t5_bias"])
def test_compiled_flex_equals_the_math_reference(monkeypatch, position):
    """FlexAttention as the backend runs it by default (compiled by inductor, once per shape) for an evaluation
    forward with padding."""
    monkeypatch.setattr(kernels, "COMPILE_FLEX", True)
    model = build(["model=llama_tiny", f"model/position={position}", "model.n_kv_heads=2", *STD])
    batch = padded_batch(model)
    torch.testing.assert_close(forward(model, batch, "flex"), forward(model, batch, "math"), rtol=0, atol=ATOL)


@pytest.mark.slow
def test_the_benchmark_checks_every_backend_against_math_at_a_tiny_size(tmp_path):
    """experiments/benchmarks/attention_backends.py, tiny, one case: it checks and times every backend."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "attention_backends.py"
    out = tmp_path / "ab.json"
    argv = [sys.executable, str(script), "--tiny", "--rounds", "1", "--cases", "ALiBi", "--out", str(out)]
    table = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    assert "| ALiBi | **flex** |" in table
    case = json.loads(out.read_text())["cases"]["ALiBi"]
    assert set(case["median_ms"]) == {"math", "sdpa", "flex"} and max(case["max_abs_diff_vs_math"].values()) <= 1e-4
    assert all(peak > 0 for peak in case["peak_bytes"].values())
