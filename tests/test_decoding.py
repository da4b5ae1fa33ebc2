"""Decoding strategies against hand-checked behaviour: the score filters, the repetition penalty, stop tokens,
sampling (seeded, and its distribution), and beam search (against exhaustive search, with length penalty and
early stopping as Hugging Face defines them)."""

from __future__ import annotations

import itertools
import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import build
from tfgraph.decoding import (
    cpu,
    generate,
    generate_windowed,
    min_p_filter,
    onednn_linear,
    repetition_penalty,
    sampling_scores,
    top_k_filter,
    top_p_filter,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # one thread for tiny models (tests/conftest.py)

NEG = float("-inf")


def kept(scores: torch.Tensor) -> list[int]:
    return torch.isfinite(scores[0]).nonzero()[:, 0].tolist()


def logs(*probs: float) -> torch.Tensor:
    return torch.tensor([probs]).log()


# ---------------------------------------------------------------------------------------------------- filters


def test_top_k_keeps_the_k_best():
    scores = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0]])
    assert kept(top_k_filter(scores, 2)) == [1, 4]
    assert kept(top_k_filter(scores, 1)) == [1]
    assert kept(top_k_filter(scores, 10)) == [0, 1, 2, 3, 4]
    torch.testing.assert_close(top_k_filter(scores, 3)[0, [1, 2, 4]], scores[0, [1, 2, 4]])  # kept scores unchanged


def test_top_p_keeps_the_nucleus():
    scores = logs(0.05, 0.5, 0.15, 0.3)  # sorted: 0.5 (1), 0.3 (3), 0.15 (2), 0.05 (0)
    assert kept(top_p_filter(scores, 0.4)) == [1]  # 0.5 >= 0.4 already
    assert kept(top_p_filter(scores, 0.7)) == [1, 3]  # 0.5 + 0.3 = 0.8 >= 0.7
    assert kept(top_p_filter(scores, 0.9)) == [1, 2, 3]  # 0.95 >= 0.9
    assert kept(top_p_filter(scores, 0.99)) == [0, 1, 2, 3]
    assert kept(top_p_filter(scores, 0.01)) == [1]  # the most likely token always stays


def test_min_p_keeps_tokens_above_a_share_of_the_best():
    scores = logs(0.05, 0.5, 0.15, 0.3)
    assert kept(min_p_filter(scores, 0.5)) == [1, 3]  # threshold 0.25
    assert kept(min_p_filter(scores, 0.2)) == [1, 2, 3]  # threshold 0.1
    assert kept(min_p_filter(scores, 1.0)) == [1]
    assert kept(min_p_filter(scores, 0.0)) == [0, 1, 2, 3]


def test_repetition_penalty_divides_positive_and_multiplies_negative_scores():
    scores = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    torch.testing.assert_close(repetition_penalty(scores, seen, 2.0), torch.tensor([[1.0, -4.0, 1.0, -1.0]]))
    torch.testing.assert_close(repetition_penalty(scores, seen, 0.5), torch.tensor([[4.0, -1.0, 1.0, -1.0]]))


def test_sampling_scores_apply_temperature_then_filters():
    scores = torch.tensor([[1.0, 4.0, 2.0, 3.0]])
    torch.testing.assert_close(sampling_scores(scores, temperature=2.0), scores / 2)
    assert kept(sampling_scores(scores, temperature=0.5, top_k=2)) == [1, 3]
    # top-p after temperature: at T=0.1 the best token alone holds > 99.99% of the mass
    assert kept(sampling_scores(scores, temperature=0.1, top_p=0.99)) == [1]
    assert kept(sampling_scores(scores, temperature=10.0, top_p=0.99)) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------- a toy model


class MarkovLM(nn.Module):
    """A decoder-only toy whose next-token log-probabilities depend on the last token only: ``table[last]``.

    It keeps no cache (generate with ``use_cache=False``) and counts its calls.
    """

    topology = "decoder_only"

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.max_len, self.vocab_size = 64, table.shape[0]  # what decoding reads of a model
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, *, position_ids=None, logits_to_keep=None):
        self.calls += 1
        logits = self.table[input_ids]
        return logits if logits_to_keep is None else logits[:, -logits_to_keep:]


def chain(vocab: int, rows: dict[int, dict[int, float]]) -> torch.Tensor:
    """Log-probabilities [V, V]: row r puts the given probabilities on its tokens and shares the rest evenly."""
    table = torch.zeros(vocab, vocab)
    for r in range(vocab):
        given = rows.get(r, {})
        rest = (1.0 - sum(given.values())) / (vocab - len(given))
        table[r] = torch.tensor([given.get(t, rest) for t in range(vocab)])
    return table.log()


def toy(rows: dict[int, dict[int, float]], vocab: int = 8) -> MarkovLM:
    return MarkovLM(chain(vocab, rows))


# 1 -> 2 -> 3 -> 0 (end); 4 -> 0 at once; 5 repeats itself unless penalised (then 6)
CHAIN = {1: {2: 0.9}, 2: {3: 0.9}, 3: {0: 0.9}, 4: {0: 0.9}, 5: {5: 0.5, 6: 0.4}, 6: {6: 0.5, 5: 0.4}}


def test_greedy_follows_the_most_likely_chain_and_stops_rows_independently():
    model = toy(CHAIN)
    prompts = torch.tensor([[7, 1], [7, 4]])
    out = generate(model, prompts, max_new_tokens=6, eos_token_id=0, pad_token_id=7, use_cache=False)
    assert out.sequences.tolist() == [[2, 3, 0], [0, 7, 7]]  # row 2 is done after one token; stop when all are
    assert model.calls == 3
    no_stop = generate(model, prompts, max_new_tokens=5, use_cache=False).sequences
    assert no_stop.shape == (2, 5)  # without a stop token every row runs to max_new_tokens
    several = generate(model, prompts, max_new_tokens=6, eos_token_id=[3, 0], pad_token_id=7, use_cache=False)
    assert several.sequences.tolist() == [[2, 3], [0, 7]]


def test_repetition_penalty_in_generation():
    model = toy(CHAIN)
    prompt = torch.tensor([[5]])
    assert generate(model, prompt, max_new_tokens=3, use_cache=False).sequences.tolist() == [[5, 5, 5]]
    # the prompt's 5 is seen: log 0.5 * 1.3 = -0.90 still beats log 0.4 = -0.92, but log 0.5 * 1.5 = -1.04 does not;
    # once 6 is seen too, both are penalised and 6 (log 0.5 from 6) stays ahead of 5 (log 0.4)
    mild = generate(model, prompt, max_new_tokens=3, repetition_penalty=1.3, use_cache=False)
    assert mild.sequences.tolist() == [[5, 5, 5]]
    strong = generate(model, prompt, max_new_tokens=3, repetition_penalty=1.5, use_cache=False)
    assert strong.sequences.tolist() == [[6, 6, 6]]


def test_streamer_gets_every_step():
    model = build(["model=gpt2_tiny", "model.init_std=0.1"])
    got = []
    out = generate(model, torch.randint(0, 512, (2, 5)), max_new_tokens=4, streamer=got.append)
    assert len(got) == 4 and torch.equal(torch.stack(got, dim=1), out.sequences)


# ----------------------------------------------------------------------------------------------- sampling


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    model = build(["model=llama_tiny", "model.init_std=0.1"])
    prompt = torch.randint(0, 512, (3, 5), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=10, strategy="sample", top_k=50, temperature=1.5)
    a = generate(model, prompt, seed=123, **kwargs).sequences
    assert torch.equal(a, generate(model, prompt, seed=123, **kwargs).sequences)
    assert torch.equal(a, generate(model, prompt, seed=123, use_cache=False, **kwargs).sequences)
    assert torch.equal(a, generate(model, prompt, generator=torch.Generator().manual_seed(123), **kwargs).sequences)
    assert not torch.equal(a, generate(model, prompt, seed=124, **kwargs).sequences)
    draws = generate(model, prompt, seed=5, num_return_sequences=4, **kwargs).sequences
    assert draws.shape == (12, 10) and len({tuple(r) for r in draws[:4].tolist()}) > 1  # independent draws per input


def test_sampling_follows_the_processed_distribution():
    probs = {1: 0.5, 2: 0.3, 3: 0.15, 4: 0.05}
    model = toy({0: probs}, vocab=5)  # token 0 gets nothing
    prompt = torch.zeros(1, 1, dtype=torch.long)

    def frequencies(**settings) -> torch.Tensor:
        out = generate(model, prompt, max_new_tokens=1, strategy="sample", seed=0, num_return_sequences=4000,
                       use_cache=False, **settings)  # fmt: skip
        return torch.bincount(out.sequences[:, 0], minlength=5).float() / 4000

    expected = torch.tensor([0.0, 0.5, 0.3, 0.15, 0.05])
    torch.testing.assert_close(frequencies(), expected, rtol=0, atol=0.03)
    tempered = expected.clamp(min=1e-12) ** 0.5
    torch.testing.assert_close(frequencies(temperature=2.0), tempered / tempered.sum(), rtol=0, atol=0.03)
    torch.testing.assert_close(frequencies(top_k=2), torch.tensor([0, 0.625, 0.375, 0, 0]), rtol=0, atol=0.03)
    torch.testing.assert_close(frequencies(top_p=0.9), torch.tensor([0, 0.5, 0.3, 0.15, 0]) / 0.95, rtol=0, atol=0.03)
    torch.testing.assert_close(frequencies(min_p=0.5), torch.tensor([0, 0.625, 0.375, 0, 0]), rtol=0, atol=0.03)
    assert frequencies(top_k=1)[1] == 1.0 and frequencies(min_p=1.0)[1] == 1.0


# -------------------------------------------------------------------------------------------------- beam search


def test_beam_search_equals_exhaustive_search():
    """With vocab ** length beams nothing is pruned: the n best are the n most likely of all sequences."""
    vocab, length = 4, 3
    model = build(["model=gpt2_tiny", f"model.vocab_size={vocab}", "model.init_std=0.5"])
    prompt = torch.tensor([[1, 3, 0], [2, 2, 1]])
    everything = torch.tensor(list(itertools.product(range(vocab), repeat=length)))  # [64, 3]
    for use_cache in (True, False):
        out = generate(model, prompt, max_new_tokens=length, strategy="beam", num_beams=vocab**length,
                       num_return_sequences=5, use_cache=use_cache)  # fmt: skip
        for row in range(2):
            inputs = torch.cat((prompt[row].expand(len(everything), -1), everything), dim=1)
            log_probs = model(inputs).log_softmax(-1)[:, prompt.shape[1] - 1 : -1]
            totals = log_probs.gather(-1, everything[:, :, None])[..., 0].sum(1)
            best = totals.topk(5)
            assert out.sequences[row * 5 : row * 5 + 5].tolist() == everything[best.indices].tolist()
            torch.testing.assert_close(out.scores[row * 5 : row * 5 + 5], best.values / length)  # length penalty 1


def test_length_penalty_divides_by_length_to_the_power_alpha():
    # from 7: end at once (p 0.5), or 1 (p 0.45) and then end (p 0.6): log 0.5 = -0.69 vs log 0.27 = -1.31
    model = toy({7: {0: 0.5, 1: 0.45}, 1: {0: 0.6}})
    prompt = torch.tensor([[7]])

    def beam(alpha: float):
        return generate(model, prompt, max_new_tokens=4, strategy="beam", num_beams=2, num_return_sequences=2,
                        length_penalty=alpha, eos_token_id=0, pad_token_id=7, use_cache=False)  # fmt: skip

    short, long = math.log(0.5), math.log(0.45) + math.log(0.6)
    plain = beam(0.0)
    assert plain.sequences.tolist() == [[0, 7], [1, 0]]
    torch.testing.assert_close(plain.scores, torch.tensor([short, long]))
    favoured = beam(1.0)  # -1.31 / 2 = -0.65 beats -0.69 / 1
    assert favoured.sequences.tolist() == [[1, 0], [0, 7]]
    torch.testing.assert_close(favoured.scores, torch.tensor([long / 2, short]))


def beam_calls(rows: dict, **settings) -> tuple[int, list[int]]:
    """Model calls of a beam search (1 + steps taken) and its best sequence."""
    model = toy(rows)
    out = generate(model, torch.tensor([[2]]), max_new_tokens=20, strategy="beam", num_beams=2, eos_token_id=0,
                   pad_token_id=7, use_cache=False, **settings)  # fmt: skip
    return model.calls, out.sequences[0].tolist()


def test_early_stopping_as_hugging_face_defines_it():
    # each step: end (p 0.3) or go on with 1 (p 0.6). Without length penalty, ending now (-1.20) is best, and the
    # second hypothesis [1, 0] (-1.71) is found at step 2. True stops there; False goes on while the best live beam
    # could still beat the worst hypothesis by its current score: [1, 1] (-1.02), [1, 1, 1] (-1.53), not [1, 1, 1, 1]
    go_on = {t: {0: 0.3, 1: 0.6} for t in range(8)}
    assert beam_calls(go_on, early_stopping=True, length_penalty=0.0) == (2, [0])
    assert beam_calls(go_on, early_stopping=False, length_penalty=0.0) == (4, [0])
    # each step: end (p 0.7) or go on with 1 (p 0.2); with length penalty 1 the live beam [1, 1] (-3.22 / 2) cannot
    # beat [1, 0] (-1.97 / 2 = -0.98) at its current length, so False stops; "never" judges a live beam of k tokens
    # at the longest length, k * log 0.2 / 20, which falls below -0.98 only at k = 13
    end_soon = {t: {0: 0.7, 1: 0.2} for t in range(8)}
    assert beam_calls(end_soon, early_stopping=False) == (2, [0])
    assert 12 * math.log(0.2) / 20 > (math.log(0.2) + math.log(0.7)) / 2 > 13 * math.log(0.2) / 20
    assert beam_calls(end_soon, early_stopping="never") == (13, [0])


@pytest.mark.parametrize("preset", ["gpt2_tiny", "t5_tiny"])
def test_beam_search_with_cache_equals_without(preset):
    model = build([f"model={preset}", "model.init_std=0.2"])
    source = torch.randint(0, 512, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(source)
    mask[1, :2] = 0  # left padding (a padded source for the encoder-decoder)
    kwargs = dict(max_new_tokens=6, strategy="beam", num_beams=3, num_return_sequences=2, eos_token_id=5,
                  repetition_penalty=1.2)  # fmt: skip
    if model.topology == "encoder_decoder":
        kwargs["decoder_start_token_id"] = 0
    cached = generate(model, source, mask, **kwargs)
    full = generate(model, source, mask, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, full.sequences)
    torch.testing.assert_close(cached.scores, full.scores, rtol=0, atol=1e-5)
    assert (cached.scores[0::2] >= cached.scores[1::2]).all()  # best first


def test_windowed_generation_slides_past_the_context_with_one_generator():
    model = toy({1: {2: 0.6}, 2: {3: 0.6}, 3: {1: 0.6}}, vocab=5)  # a cycle; the next token depends on the last only
    prompt = torch.tensor([[1, 2]])
    read: list[int] = []  # how many tokens each forward reads
    model.register_forward_hook(lambda module, args, out: read.append(args[0].shape[1]))
    for settings in ({}, {"strategy": "sample", "seed": 3}):
        whole = generate(model, prompt, max_new_tokens=30, use_cache=False, **settings)
        steps: list[torch.Tensor] = []
        read.clear()
        windowed = generate_windowed(
            model, prompt, max_new_tokens=30, context=8, use_cache=False, streamer=steps.append, **settings
        )
        # a chunk of 6 tokens after the prompt, then chunks of 4 from the last 4 of 8: never more than the context
        assert read == [2, 3, 4, 5, 6, 7] + [4, 5, 6, 7] * 6
        assert torch.equal(windowed.sequences, whole.sequences)  # one random stream, as in one call
        assert torch.equal(torch.cat(steps), whole.sequences[0])


def test_windowed_generation_refuses_what_cannot_run_in_chunks():
    model = toy(CHAIN)
    rows = torch.tensor([[1, 2], [4, 5]])
    fits = generate_windowed(model, rows, max_new_tokens=4, context=8, use_cache=False)  # as generate() when it fits
    assert torch.equal(fits.sequences, generate(model, rows, max_new_tokens=4, use_cache=False).sequences)
    with pytest.raises(ValueError, match="runs in chunks of one sequence"):
        generate_windowed(model, rows, max_new_tokens=10, context=8, use_cache=False)
    with pytest.raises(ValueError, match="runs in chunks of one sequence"):
        generate_windowed(model, rows[:1], max_new_tokens=10, context=8, strategy="beam", use_cache=False)


# -------------------------------------------------------------------------------------------------------- errors


def test_settings_that_cannot_apply_are_refused():
    model = build(["model=gpt2_tiny"])
    prompt = torch.randint(0, 512, (2, 4))
    with pytest.raises(ValueError, match="top_k applies only to strategy='sample'"):
        generate(model, prompt, max_new_tokens=2, top_k=5)
    with pytest.raises(ValueError, match="num_beams applies only to strategy='beam'"):
        generate(model, prompt, max_new_tokens=2, strategy="sample", num_beams=2)
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, prompt, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_len"):
        generate(model, prompt, max_new_tokens=300)
    with pytest.raises(ValueError, match="temperature must be positive"):
        generate(model, prompt, max_new_tokens=2, strategy="sample", temperature=0.0)
    with pytest.raises(ValueError, match="streamer"):
        generate(model, prompt, max_new_tokens=2, strategy="beam", streamer=print)
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        generate(build(["model=t5_tiny"]), prompt, max_new_tokens=2)
    with pytest.raises(ValueError, match="encoder_only"):
        generate(build(["model=bert_tiny"]), prompt, max_new_tokens=2)


def test_generation_leaves_the_model_mode_alone():
    model = build(["model=gpt2_tiny"]).train()
    generate(model, torch.randint(0, 512, (1, 4)), max_new_tokens=2)
    assert model.training


def test_onednn_linear_computes_f_linear():
    x, weight, bias = torch.randn(2, 3, 16), torch.randn(8, 16), torch.randn(8)
    with torch.no_grad(), onednn_linear():
        routed = (F.linear(x, weight, bias), F.linear(x, weight), F.linear(x[0, :1], nn.Parameter(weight)))
    expected = (F.linear(x, weight, bias), F.linear(x, weight), F.linear(x[0, :1], weight))
    for got, want in zip(routed, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    leaf = nn.Parameter(weight.clone())
    with onednn_linear():  # autograd wanted: PyTorch's own kernel, gradients flow
        F.linear(x, leaf).sum().backward()
    assert leaf.grad is not None

    model = build(["model=gpt2_tiny", "model.init_std=0.1"])
    prompt = torch.randint(0, 512, (2, 5), generator=torch.Generator().manual_seed(0))
    fast = generate(model, prompt, max_new_tokens=6, output_logits=True, cpu_linear="onednn")
    plain = generate(model, prompt, max_new_tokens=6, output_logits=True, cpu_linear="pytorch")
    assert torch.equal(fast.sequences, plain.sequences)
    torch.testing.assert_close(fast.logits, plain.logits, rtol=0, atol=1e-5)


def fast_and_plain(model: nn.Module) -> tuple:
    prompt = torch.randint(0, 512, (2, 5), generator=torch.Generator().manual_seed(0))
    return (
        generate(model, prompt, max_new_tokens=6, output_logits=True, cpu_linear="onednn"),
        generate(model, prompt, max_new_tokens=6, output_logits=True, cpu_linear="pytorch"),
    )


def assert_same(a, b) -> None:
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-5)


def test_a_build_without_the_onednn_kernel_decodes_with_f_linear(monkeypatch):
    monkeypatch.setattr(cpu, "onednn_available", lambda: False)  # another torch version, a CPU without it
    assert isinstance(onednn_linear(), nullcontext)
    assert_same(*fast_and_plain(build(["model=gpt2_tiny", "model.init_std=0.1"])))


def failing_kernel(*args, **kwargs):
    raise RuntimeError("oneDNN: unsupported on this CPU")


def test_an_onednn_kernel_that_raises_falls_back_to_f_linear(monkeypatch):
    if not cpu.onednn_available():
        pytest.skip("this PyTorch build has no working oneDNN linear kernel")
    model = build(["model=gpt2_tiny", "model.init_std=0.1"])
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", failing_kernel)
    mode = onednn_linear()  # the probe said yes before the kernel broke: the mode is on, and falls back at once
    assert isinstance(mode, cpu.OneDNNLinear)
    x, weight = torch.randn(3, 16), torch.randn(8, 16)
    with torch.no_grad(), mode:
        torch.testing.assert_close(F.linear(x, weight), x @ weight.T)
    assert mode.failed
    assert_same(*fast_and_plain(model))

    cpu.onednn_available.cache_clear()  # probed afresh, the kernel is found wanting
    try:
        assert not cpu.onednn_available()
        assert isinstance(onednn_linear(), nullcontext)
    finally:
        cpu.onednn_available.cache_clear()
