"""The KV cache computes what the full forward computes: for every generative preset with every option of every
swappable group, under left padding, in chunks, beyond a sliding window, and for cross-attention (memory projected
once). The uncached path keeps SDPA's fast path, and a cached one-token step builds no mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tfgraph
from tests.conftest import SWAPPABLE_GROUPS, TINY_PRESETS, build, group_options
from tfgraph.blocks.attention import MultiHeadAttention
from tfgraph.checks import Subject, run_checks
from tfgraph.decoding import generate

GENERATIVE = tuple(p for p in TINY_PRESETS if p != "bert_tiny")  # an encoder-only model generates nothing
DECODER_ONLY = ("gpt2_tiny", "llama_tiny")
POSITIONS = group_options("position")
MATRIX = [(p, g, o) for p in GENERATIVE for g in SWAPPABLE_GROUPS for o in group_options(g)]
STD = ["model.init_std=0.1", "model.max_len=64"]  # weights large enough for varied tokens; logits still O(1)
ATOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 512, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_same_generation(a, b):
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=ATOL)


@pytest.mark.parametrize(("preset", "group", "option"), MATRIX, ids=[f"{p}-{g}={o}" for p, g, o in MATRIX])
def test_greedy_with_cache_equals_without(preset, group, option):
    """tfgraph-check's cache check: 8 greedy tokens after a 7-token prompt (2 rows; an encoder-decoder's source
    padded in its last row) with and without the cache, the same tokens and per-step logits within ATOL."""
    model = build([f"model={preset}", f"model/{group}={option}", *STD])
    (result,) = run_checks(Subject(model=model, seq_len=12, new_tokens=8, atol=ATOL), ["cache"])
    assert result.status == "pass", result
    assert result.figure.startswith("greedy tokens equal: 16/16")


def left_padded(lengths: list[int], width: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = ids(len(lengths), width, seed)
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    return tokens.masked_fill(mask == 0, 7), mask  # padding holds a real token id: the mask alone must hide it


LEFT_PADDING = [(p, pos) for p in DECODER_ONLY for pos in POSITIONS] + [("llama_tiny", "sliding_window")]


@pytest.mark.parametrize(("preset", "position"), LEFT_PADDING, ids=[f"{p}-{pos}" for p, pos in LEFT_PADDING])
def test_left_padded_batch_generates_each_row_as_alone(preset, position):
    if position == "sliding_window":
        overrides = ["model/attention=sliding_window", "model.attention.window=3"]
    else:
        overrides = [f"model/position={position}"]
    model = build([f"model={preset}", *overrides, *STD])
    tokens, mask = left_padded([6, 3, 4], 6)
    kwargs = dict(max_new_tokens=6, output_logits=True)
    batch = generate(model, tokens, mask, **kwargs)
    assert_same_generation(batch, generate(model, tokens, mask, use_cache=False, **kwargs))
    for row, n in enumerate([6, 3, 4]):
        alone = generate(model, tokens[row : row + 1, 6 - n :], **kwargs)
        assert torch.equal(batch.sequences[row : row + 1], alone.sequences)
        torch.testing.assert_close(batch.logits[row : row + 1], alone.logits, rtol=0, atol=ATOL)


CHUNKED = [(p, pos) for p in DECODER_ONLY for pos in POSITIONS]


@pytest.mark.parametrize(("preset", "position"), CHUNKED, ids=[f"{p}-{pos}" for p, pos in CHUNKED])
def test_prefill_in_chunks_equals_one_forward(preset, position):
    model = build([f"model={preset}", f"model/position={position}", *STD])
    tokens = ids(2, 12)
    full = model(tokens)
    for chunks in ([12], [5, 7], [5, 4, 1, 1, 1]):
        cache = model.new_cache(2, 16)
        pieces, start = [], 0
        for n in chunks:
            pieces.append(model(tokens[:, start : start + n], cache=cache))
            start += n
        assert cache.length == 12
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=ATOL)

    # left padding in the first chunk: positions continue per row in later chunks
    padded, mask = left_padded([12, 8], 12)
    reference = model(padded, mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0))
    cache = model.new_cache(2, 16)
    first = model(padded[:, :6], mask[:, :6], cache=cache)
    second = model(padded[:, 6:], cache=cache)
    real = mask.bool()
    torch.testing.assert_close(torch.cat((first, second), dim=1)[real], reference[real], rtol=0, atol=ATOL)
    alone = model(padded[1:, 4:])
    torch.testing.assert_close(second[1:], alone[:, 2:], rtol=0, atol=ATOL)


@pytest.mark.parametrize("position", ["rope", "alibi", "learned", "t5_bias"])
def test_sliding_window_with_the_cache_beyond_the_window(position):
    model = build(
        [
            "model=llama_tiny",
            f"model/position={position}",
            "model.pattern=[{attention: {block: sliding_window, window: 3}}, {}]",
        ]
        + STD
    )
    assert model.decoder.windows == (3, None)
    prompt = ids(2, 5)
    kwargs = dict(max_new_tokens=12, output_logits=True)  # 17 tokens, far beyond the window of 3
    assert_same_generation(generate(model, prompt, **kwargs), generate(model, prompt, use_cache=False, **kwargs))

    # the window really binds: a token more than 3 back changes nothing in a window-only model
    local = build(["model=llama_tiny", f"model/position={position}", "model/attention=sliding_window",
                   "model.attention.window=3", *STD])  # fmt: skip
    cache = local.new_cache(1, 16)
    tokens = ids(1, 10)
    changed = tokens.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 512
    local(tokens[:, :9], cache=cache)
    step = local(tokens[:, 9:], cache=cache)
    torch.testing.assert_close(step, local(changed)[:, 9:], rtol=0, atol=ATOL)
    torch.testing.assert_close(step, local(tokens)[:, 9:], rtol=0, atol=ATOL)


@pytest.mark.parametrize("preset", ["t5_tiny", "transformer_tiny"])
def test_cross_attention_projects_the_memory_once(preset):
    model = build([f"model={preset}", *STD])
    calls = []
    for layer in model.decoder.layers:
        layer.cross.kv.register_forward_hook(lambda module, args, out: calls.append(module))
    source = ids(2, 9)
    forced = dict(decoder_start_token_id=0, cpu_linear="pytorch")  # a forced kernel: no timed steps to count
    generate(model, source, max_new_tokens=6, **forced)
    assert len(calls) == len(model.decoder.layers)  # once per layer for the whole generation
    calls.clear()
    generate(model, source, max_new_tokens=6, strategy="beam", num_beams=3, **forced)
    assert len(calls) == len(model.decoder.layers)  # beams reorder the projected memory, never recompute it
    calls.clear()
    generate(model, source, max_new_tokens=6, use_cache=False, **forced)
    assert len(calls) == 6 * len(model.decoder.layers)


def sdpa_calls(monkeypatch) -> list[dict]:
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        calls.append({"q": tuple(q.shape), "k": tuple(k.shape), "attn_mask": attn_mask, **kwargs})
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


def test_fast_paths_keep_no_mask(monkeypatch):
    model = build(["model=llama_tiny", *STD])
    calls = sdpa_calls(monkeypatch)
    tokens = ids(2, 8)
    model(tokens)  # training path: SDPA's own causal kernel, no mask tensor
    assert calls and all(c["attn_mask"] is None and c["is_causal"] for c in calls)

    calls.clear()
    cache = model.new_cache(2, 16)
    model(tokens, cache=cache)  # prefill from slot 0: the same fast path
    assert all(c["attn_mask"] is None and c["is_causal"] for c in calls)
    calls.clear()
    model(tokens[:, :1], cache=cache)  # one-token step: no mask at all, keys = every cached slot
    assert all(c["attn_mask"] is None and not c["is_causal"] and c["k"][2] == 9 for c in calls)

    window = build(["model=llama_tiny", "model/attention=sliding_window", "model.attention.window=3", *STD])
    calls.clear()
    cache = window.new_cache(2, 16)
    window(tokens, cache=cache)
    calls.clear()
    window(tokens[:, :1], cache=cache)  # the window is a slice of the cache, not a mask
    assert all(c["attn_mask"] is None and c["k"][2] == 3 for c in calls)


def test_a_block_without_a_cache_is_refused_clearly():
    @tfgraph.register("attention", "no_cache_test_only")
    class NoCache(MultiHeadAttention):
        needs = ("context",)

        def forward(self, x, ctx):
            return super().forward(x, ctx)

    model = build(["model=gpt2_tiny", "model.attention.block=no_cache_test_only", *STD])
    with pytest.raises(ValueError, match=r"layers\.0\.attn.*use_cache=False"):
        generate(model, ids(1, 4), max_new_tokens=2)
    assert generate(model, ids(1, 4), max_new_tokens=2, use_cache=False).sequences.shape == (1, 2)


def test_cache_overflow_and_misuse_are_errors():
    model = build(["model=gpt2_tiny", *STD])
    cache = model.new_cache(1, 4)
    model(ids(1, 3), cache=cache)
    with pytest.raises(ValueError, match="4 slots"):
        model(ids(1, 2), cache=cache)
    with pytest.raises(ValueError, match="position_ids"):
        model(ids(1, 1), cache=model.new_cache(1, 4), position_ids=torch.arange(1))
    with pytest.raises(ValueError, match="encoder_only"):
        build(["model=bert_tiny"]).new_cache(1)
