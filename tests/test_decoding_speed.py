"""How decoding runs fast without changing a token: the CPU linear kernel chosen by timing both (remembered for the
process and, when asked, on disk; forced by ``cpu_linear``), and the decode step over a static cache that
``torch.compile`` captures whole (``compile=True``), each checked to give the tokens of the plain eager path."""

from __future__ import annotations

import json

import pytest
import torch

import tfgraph
from tests.conftest import build
from tests.test_cache import ids, left_padded
from tests.test_decoding_options import command_options
from tfgraph.blocks.context import StaticStackCache
from tfgraph.decoding import api, cpu, generate, session

pytestmark = pytest.mark.usefixtures("one_thread")  # one thread for tiny models (tests/conftest.py)

STD = ["model.init_std=0.1", "model.max_len=64"]
needs_onednn = pytest.mark.skipif(not cpu.onednn_available(), reason="this PyTorch build has no oneDNN linear kernel")


@pytest.fixture(autouse=True)
def fresh_choices():
    """Every test starts with nothing remembered and leaves nothing behind."""
    cpu.forget_choices()
    yield
    cpu.forget_choices()


def fake_timing(monkeypatch, step_ms: dict[str, float], clear: bool = True, budgets: list | None = None) -> list[int]:
    """Replace the timing of decode steps by ``step_ms`` (their ratio as the median of the pairs', ``clear`` or not);
    returns the list of the rows each timing was asked for (and appends its time budget to ``budgets``)."""
    asked = []

    def timed(model, *, rows, use_cache=True, pairs=None, max_seconds=cpu.MAX_SECONDS):
        asked.append(rows)
        if budgets is not None:
            budgets.append(max_seconds)
        return cpu.StepTiming(dict(step_ms), step_ms["onednn"] / step_ms["pytorch"], 8, 0.1, clear)

    monkeypatch.setattr(cpu, "time_decode_steps", timed)
    return asked


# ------------------------------------------------------------------------------------------------ kernel choice


@needs_onednn
@pytest.mark.parametrize(("step_ms", "faster"), [({"onednn": 1.0, "pytorch": 2.0}, "onednn"),
                                                  ({"onednn": 3.0, "pytorch": 2.0}, "pytorch")])  # fmt: skip
def test_the_faster_kernel_is_chosen_once_per_process(monkeypatch, step_ms, faster):
    asked = fake_timing(monkeypatch, step_ms)
    model = build(["model=gpt2_tiny", *STD])
    first = cpu.choose_linear(model.eval(), rows=2)
    assert (first.kernel, first.reason, first.step_ms, first.pairs) == (faster, "measured", step_ms, 8)
    again = cpu.choose_linear(model, rows=2)
    assert (again.kernel, again.reason) == (faster, "remembered")
    cpu.choose_linear(model, rows=3)  # another batch: timed again
    cpu.choose_linear(build(["model=gpt2_tiny", "model.d_model=32", *STD]), rows=2)  # other shapes too
    assert asked == [2, 3, 2]

    entered = []
    monkeypatch.setattr(api, "linear_kernel", lambda kernel: entered.append(kernel) or cpu.linear_kernel(kernel))
    generate(model, ids(2, 4), max_new_tokens=3)  # generate runs on the remembered choice, timing nothing more
    assert entered == [faster] and asked == [2, 3, 2]


@pytest.mark.parametrize(("ratio", "kernel"), [(0.5, "onednn"), (0.89, "onednn"), (0.91, "pytorch"), (1.2, "pytorch")])
def test_onednn_is_chosen_only_when_faster_by_the_margin(ratio, kernel):
    assert cpu.StepTiming({}, ratio, 8, 0.1).kernel() == kernel  # MARGIN 0.1: a near tie keeps PyTorch's own


@pytest.mark.parametrize(
    ("ratios", "seconds", "done", "clear"),
    [
        ([0.5] * 7, 0.5, False, True),  # fewer than MIN_PAIRS pairs (clear, but time on)
        ([0.5] * 8, 0.05, False, True),  # under MIN_SECONDS
        ([0.5] * 8, 0.2, True, True),  # clearly below the threshold
        ([2.0] * 10 + [0.1] * 2, 0.2, True, True),  # clearly above it, whatever a burst did to two pairs
        ([2.0] * 3 + [0.1] * 2, 0.2, False, False),  # two of five against: not clear
        ([0.85, 0.95] * 10, 0.2, False, False),  # straddles 0.9: time on
        ([0.85, 0.95] * 10, cpu.MAX_SECONDS, True, False),  # ... until the time is up
        ([0.85, 0.95] * (cpu.MAX_PAIRS // 2), 0.2, True, False),  # ... or the pairs
    ],
)
def test_the_timing_stops_when_the_choice_is_clear(ratios, seconds, done, clear):
    assert cpu._enough(ratios, seconds, None) is done and cpu.clear(ratios) is clear
    assert cpu._enough(ratios, 0.05, None, max_seconds=0.05)  # a shorter budget (timing again after a drift)
    assert cpu._enough(ratios, 0.0, len(ratios)) and not cpu._enough(ratios, 10.0, len(ratios) + 1)  # pairs given


@needs_onednn
def test_a_choice_whose_steps_drift_is_timed_again(monkeypatch):
    asked = fake_timing(monkeypatch, {"onednn": 500.0, "pytorch": 1000.0})  # far slower than the real steps
    monkeypatch.setattr(cpu, "RETIME_SECONDS", 0.0)
    model = build(["model=gpt2_tiny", *STD])
    generate(model, ids(1, 4), max_new_tokens=cpu.MIN_OBSERVED_STEPS)  # timed; too few steps to judge the drift
    generate(model, ids(1, 4), max_new_tokens=3, cpu_linear="onednn")  # forced: times nothing, judges nothing
    assert asked == [1] and len(cpu.measurements()) == 1
    generate(model, ids(1, 4), max_new_tokens=cpu.MIN_OBSERVED_STEPS + 1)  # steps of a fraction of 500 ms: drift
    assert asked == [1]  # ... judged after the generation
    generate(model, ids(1, 4), max_new_tokens=3)  # so this one times the kernels again
    assert asked == [1, 1] and [c.reason for c in cpu.measurements()] == ["measured", "measured"]

    monkeypatch.setattr(cpu, "RETIME_SECONDS", 3600.0)  # at most once an hour: the drift is seen, nothing timed
    generate(model, ids(1, 4), max_new_tokens=cpu.MIN_OBSERVED_STEPS + 1)
    generate(model, ids(1, 4), max_new_tokens=3)
    assert asked == [1, 1]

    choice = cpu.choose_linear(model, rows=1)
    assert not cpu.observe(choice, steps=100, seconds=100 * 0.6)  # within DRIFT of the timed 500 ms: kept
    monkeypatch.setattr(cpu, "RETIME_SECONDS", 0.0)
    assert cpu.observe(choice, steps=100, seconds=100 * 1.2)  # 2.4 times slower: forgotten
    assert cpu.choose_linear(model, rows=1).reason == "measured"


@needs_onednn
def test_a_timing_again_is_short_and_switches_only_when_clear(monkeypatch):
    budgets = []
    fake_timing(monkeypatch, {"onednn": 1.0, "pytorch": 2.0}, budgets=budgets)
    monkeypatch.setattr(cpu, "RETIME_SECONDS", 0.0)
    model = build(["model=gpt2_tiny", *STD])
    first = cpu.choose_linear(model, rows=1)
    assert first.kernel == "onednn" and budgets == [cpu.MAX_SECONDS]

    fake_timing(monkeypatch, {"onednn": 3.0, "pytorch": 2.0}, clear=False, budgets=budgets)  # unclear: stay
    assert cpu.observe(first, steps=20, seconds=2.0)  # 100 ms steps against 1 ms timed
    again = cpu.choose_linear(model, rows=1)
    assert (again.kernel, again.reason, again.ratio) == ("onednn", "kept", 1.5)
    assert budgets[1] == pytest.approx(cpu.RETIME_SHARE * 2.0)  # a tenth of the drifting generation's steps

    fake_timing(monkeypatch, {"onednn": 3.0, "pytorch": 2.0}, clear=True, budgets=budgets)  # clear: switch
    assert cpu.observe(again, steps=20, seconds=1000.0)  # 50 s steps against 3 ms timed
    assert (cpu.choose_linear(model, rows=1).kernel, budgets[2]) == ("pytorch", cpu.MAX_SECONDS)  # at most 1 s


@needs_onednn
def test_a_forced_kernel_times_nothing(monkeypatch):
    asked = fake_timing(monkeypatch, {"onednn": 1.0, "pytorch": 2.0})
    model = build(["model=gpt2_tiny", *STD])
    assert cpu.choose_linear(model, rows=1, wanted="pytorch") == cpu.LinearChoice("pytorch", "forced")
    generate(model, ids(1, 4), max_new_tokens=3, cpu_linear="onednn")
    generate(model, ids(1, 4), max_new_tokens=3, cpu_linear="pytorch")
    assert asked == []


def test_a_model_off_float32_cpu_runs_pytorch_s_kernel(monkeypatch):
    asked = fake_timing(monkeypatch, {"onednn": 1.0, "pytorch": 2.0})
    model = build(["model=gpt2_tiny", *STD]).to(torch.bfloat16)
    assert cpu.choose_linear(model, rows=1) == cpu.LinearChoice("pytorch", "not a float32 CPU model")
    monkeypatch.setattr(cpu, "onednn_available", lambda: False)
    assert cpu.choose_linear(build(["model=gpt2_tiny", *STD]), rows=1).reason == "oneDNN unavailable"
    assert asked == []


@needs_onednn
def test_real_timing_of_both_kernels():
    model = build(["model=t5_tiny", *STD]).eval()  # an encoder-decoder: the steps feed its decoder
    timing = cpu.time_decode_steps(model, rows=2, pairs=2)
    assert set(timing.step_ms) == set(cpu.KERNELS) and all(ms > 0 for ms in timing.step_ms.values())
    assert timing.pairs == 2 and timing.ratio > 0
    choice = cpu.choose_linear(model, rows=2, pairs=2)
    assert choice.reason == "measured" and choice.pairs == 2
    assert choice.kernel == ("onednn" if choice.ratio < 1 - cpu.MARGIN else "pytorch")
    short = build(["model=gpt2_tiny", "model.init_std=0.1", "model.max_len=8"]).eval()  # sessions fit its context:
    assert cpu.time_decode_steps(short, rows=1, pairs=5).pairs == 5  # two pairs each, then a fresh one


@needs_onednn
def test_choices_are_remembered_on_disk_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("TFGRAPH_CACHE", str(tmp_path))
    model = build(["model=gpt2_tiny", *STD])
    fake_timing(monkeypatch, {"onednn": 3.0, "pytorch": 2.0})
    cpu.choose_linear(model, rows=1)
    assert not (tmp_path / "cpu_linear.json").exists()  # not asked: the process alone remembers

    monkeypatch.setenv(cpu.REMEMBER_ENV, "1")
    cpu.forget_choices()
    cpu.choose_linear(model, rows=1)
    stored = json.loads((tmp_path / "cpu_linear.json").read_text())
    assert [entry["kernel"] for entry in stored.values()] == ["pytorch"]

    cpu.forget_choices()  # a new process on the same machine: read from disk, nothing timed
    asked = fake_timing(monkeypatch, {"onednn": 1.0, "pytorch": 2.0})
    assert cpu.choose_linear(model, rows=1) == cpu.LinearChoice(
        "pytorch", "on disk", {"onednn": 3.0, "pytorch": 2.0}, 1.5, 8
    )
    assert asked == []

    (tmp_path / "cpu_linear.json").write_text("{not json")  # a broken file: timed again and written anew
    cpu.forget_choices()
    assert cpu.choose_linear(model, rows=1).kernel == "onednn"
    assert [e["kernel"] for e in json.loads((tmp_path / "cpu_linear.json").read_text()).values()] == ["onednn"]


@pytest.mark.parametrize("preset", ["gpt2_tiny", "t5_tiny"])
def test_every_kernel_gives_the_same_tokens(preset):
    model = build([f"model={preset}", *STD])
    prompt, mask = left_padded([5, 3], 5)
    start = {"decoder_start_token_id": 0} if model.topology == "encoder_decoder" else {}
    runs = [
        generate(model, prompt, mask, max_new_tokens=8, output_logits=True, cpu_linear=kernel, use_cache=cache, **start)
        for kernel in ("auto", "onednn", "pytorch")
        for cache in (True, False)
    ]
    for run in runs[1:]:
        assert torch.equal(run.sequences, runs[0].sequences)
        torch.testing.assert_close(run.logits, runs[0].logits, rtol=0, atol=1e-5)


def test_bad_kernel_and_compile_settings_are_refused():
    with pytest.raises(ValueError, match="cpu_linear must be 'auto', 'onednn' or 'pytorch', got 'mkl'"):
        generate(build(["model=gpt2_tiny", *STD]), ids(1, 3), max_new_tokens=2, cpu_linear="mkl")
    with pytest.raises(ValueError, match="compile=True compiles the cached decode step: it needs use_cache=True"):
        generate(build(["model=gpt2_tiny", *STD]), ids(1, 3), max_new_tokens=2, compile=True, use_cache=False)
    with pytest.raises(tfgraph.ConfigError) as err:
        command_options(cpu_linear="mkl")
    assert [key for key, _ in err.value.problems] == ["cpu_linear"]
    with pytest.raises(tfgraph.ConfigError) as err:
        command_options(compile=True, use_cache=False)
    assert [key for key, _ in err.value.problems] == ["compile"]
    assert command_options(compile=True, cpu_linear="onednn")["compile"] is True


# ---------------------------------------------------------------------------------------------- static cache


@pytest.fixture
def eager_static_step(monkeypatch):
    """``compile=True`` with the static-cache step run eagerly: the same code, checked in milliseconds."""
    monkeypatch.setattr(session, "compiled_step", lambda: session.cached_step)


STATIC_CASES = [
    ("gpt2_tiny", []),
    ("llama_tiny", []),
    ("llama_tiny", ["model/position=alibi"]),
    ("llama_tiny", ["model/position=t5_bias", "model.pattern=[{attention: {block: sliding_window, window: 3}}, {}]"]),
    ("t5_tiny", []),
    ("transformer_tiny", []),
]


@pytest.mark.parametrize(("preset", "options"), STATIC_CASES, ids=[f"{p}{len(o)}" for p, o in STATIC_CASES])
def test_the_static_cache_step_gives_the_tokens_of_the_cache(eager_static_step, preset, options):
    model = build([f"model={preset}", *options, *STD])
    prompt, mask = left_padded([6, 3], 6)
    start = {"decoder_start_token_id": 0} if model.topology == "encoder_decoder" else {}
    kwargs = dict(max_new_tokens=12, output_logits=True, cpu_linear="pytorch", **start)
    static = generate(model, prompt, mask, compile=True, **kwargs)
    cached = generate(model, prompt, mask, **kwargs)
    full = generate(model, prompt, mask, use_cache=False, **kwargs)
    for other in (cached, full):
        assert torch.equal(static.sequences, other.sequences)
        torch.testing.assert_close(static.logits, other.logits, rtol=0, atol=1e-5)
    beams = dict(max_new_tokens=6, strategy="beam", num_beams=3, num_return_sequences=2, cpu_linear="pytorch", **start)
    static_beams = generate(model, prompt, mask, compile=True, **beams)
    assert torch.equal(static_beams.sequences, generate(model, prompt, mask, **beams).sequences)


def test_a_static_cache_keeps_its_shapes(eager_static_step):
    model = build(["model=gpt2_tiny", *STD]).eval()
    cache = StaticStackCache(model.new_cache(2, 64), batch=2, device="cpu")
    shapes = [tuple(cache.layers[0][0].k.shape), tuple(cache.key_mask.shape)]
    with torch.no_grad():
        model(ids(2, 5), cache=cache)
        for token in range(3):
            session.cached_step(model, torch.tensor([token, token]), cache, None, None)
    assert int(cache.length) == 8 and cache.next_position.tolist() == [8, 8]
    assert [tuple(cache.layers[0][0].k.shape), tuple(cache.key_mask.shape)] == shapes
    assert cache.layers[0][0].k[:, :, 8:].abs().sum() == 0  # slots not yet written stay zero (never NaN)


# -------------------------------------------------------------------------------------------------- compiled


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["gpt2_tiny", "t5_tiny"])
def test_compiled_decoding_gives_the_tokens_of_cached_and_uncached(preset):
    torch._dynamo.reset()
    model = build([f"model={preset}", *STD])
    prompt, mask = left_padded([6, 3], 6)
    start = {"decoder_start_token_id": 0} if model.topology == "encoder_decoder" else {}
    kwargs = dict(max_new_tokens=10, output_logits=True, cpu_linear="pytorch", **start)
    compiled = generate(model, prompt, mask, compile=True, **kwargs)
    for other in (generate(model, prompt, mask, **kwargs), generate(model, prompt, mask, use_cache=False, **kwargs)):
        assert torch.equal(compiled.sequences, other.sequences)
        torch.testing.assert_close(compiled.logits, other.logits, rtol=0, atol=1e-4)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    generate(model, prompt[:1], mask[:1] * 0 + 1, max_new_tokens=20, compile=True, cpu_linear="pytorch", **start)
    generate(model, prompt, mask, max_new_tokens=30, compile=True, cpu_linear="pytorch", **start)
    assert (
        torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames + 1
    )  # a new batch compiles; a new length not


@pytest.mark.slow
@needs_onednn
def test_compiled_decoding_on_the_onednn_kernel():
    torch._dynamo.reset()
    model = build(["model=gpt2_tiny", *STD])
    prompt = ids(2, 5)
    compiled = generate(model, prompt, max_new_tokens=8, output_logits=True, compile=True, cpu_linear="onednn")
    eager = generate(model, prompt, max_new_tokens=8, output_logits=True, cpu_linear="pytorch")
    assert torch.equal(compiled.sequences, eager.sequences)
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=0, atol=1e-4)
