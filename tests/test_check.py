"""tfgraph-check: every check passes on the presets, fails on a block broken for it (registered here as a user's
plugin would be) naming the node to blame, skips with a reason where it cannot apply; the command prints the
table, writes JSON, exits 1 on a failure and 2 on a config mistake."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tfgraph
from tests.conftest import build
from tfgraph.blocks.attention import MultiHeadAttention
from tfgraph.blocks.ffn import MLP
from tfgraph.blocks.norm import LayerNorm
from tfgraph.checks import CHECKS, Skip, Subject, check, run_checks, small_config
from tfgraph.registry import _REGISTRY, extend_arguments
from tfgraph.show import show

pytestmark = pytest.mark.usefixtures("one_thread")  # one thread for tiny models (tests/conftest.py)

FAST = ["model.n_layers=1", "model.max_len=64"]


def only(model: nn.Module, name: str, **options) -> tfgraph.checks.CheckResult:
    (result,) = run_checks(Subject(model=model, compile_backend="aot_eager", **options), [name])
    return result


# ------------------------------------------------------------------------------------------------ broken blocks


BROKEN_BLOCKS = [
    ("attention", "peek_ahead_test"),
    ("attention", "forgetful_cache_test"),
    ("attention", "no_cache_check_test"),
    ("attention", "dense_masks_only_test"),
    ("ffn", "unused_parameter_test"),
    ("ffn", "mixes_positions_test"),
    ("ffn", "overflows_test"),
    ("ffn", "device_sized_test"),
    ("norm", "noisy_test"),
    ("norm", "graph_break_test"),
    ("norm", "unsaved_state_test"),
]  # kind, name: registered below


@pytest.fixture(autouse=True, scope="module")
def _broken_blocks_unregistered_after() -> Iterator[None]:
    """The broken blocks are registered for this module's tests only: other modules' tests list the registry."""
    yield
    for kind, name in BROKEN_BLOCKS:
        _REGISTRY[kind].pop(name, None)


@tfgraph.register("attention", "peek_ahead_test")
class PeekAhead(MultiHeadAttention):
    """Attention that also reads the next position: the future leaks into the past."""

    def forward(self, x, ctx, cache=None):
        return super().forward(x, ctx, cache) + 0.5 * x.roll(-1, dims=1)


@tfgraph.register("attention", "forgetful_cache_test")
class ForgetfulCache(MultiHeadAttention):
    """Attention whose cache drops the first position on every one-token step."""

    def forward(self, x, ctx, cache=None):
        if cache is not None and x.shape[1] == 1:
            cache.k[:, :, 0] = 0
            cache.v[:, :, 0] = 0
        return super().forward(x, ctx, cache)


@tfgraph.register("attention", "no_cache_check_test")
class NoCache(MultiHeadAttention):
    """Attention that takes the context but keeps no cache."""

    needs = ("context",)

    def forward(self, x, ctx):
        return super().forward(x, ctx)


@tfgraph.register("attention", "dense_masks_only_test")
class DenseMasksOnly(MultiHeadAttention):
    """Attention that calls SDPA itself and so reads only dense masks: under flex it attends unmasked."""

    def attend(self, q, k, v, mask, *, is_causal=False, kernel="sdpa"):
        dense = mask if isinstance(mask, torch.Tensor) else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense, is_causal=is_causal, enable_gqa=True)


@tfgraph.register("ffn", "unused_parameter_test")
class UnusedParameter(MLP):
    """An MLP with a parameter nothing reads."""

    @extend_arguments(MLP.__init__)
    def __init__(self, **arguments):
        super().__init__(**arguments)
        self.gate = nn.Parameter(torch.ones(4))


@tfgraph.register("ffn", "mixes_positions_test")
class MixesPositions(MLP):
    """An MLP that adds the mean over all positions, padding and the future included."""

    def forward(self, x):
        return super().forward(x) + x.mean(dim=1, keepdim=True)


@tfgraph.register("ffn", "overflows_test")
class Overflows(MLP):
    """An MLP whose output overflows."""

    def forward(self, x):
        return super().forward(x) * float("inf")


@tfgraph.register("ffn", "device_sized_test")
class DeviceSized(MLP):
    """An MLP that gives itself a parameter more when built on the meta device."""

    @extend_arguments(MLP.__init__)
    def __init__(self, **arguments):
        super().__init__(**arguments)
        if torch.empty(0).is_meta:
            self.extra = nn.Parameter(torch.ones(3))


@tfgraph.register("norm", "noisy_test")
class Noisy(LayerNorm):
    """A norm that adds noise in eval mode too."""

    def forward(self, x):
        return super().forward(x) + 1e-3 * torch.rand_like(x)


@tfgraph.register("norm", "graph_break_test")
class GraphBreak(LayerNorm):
    """A norm that calls out of the graph."""

    def forward(self, x):
        torch._dynamo.graph_break()
        return super().forward(x)


@tfgraph.register("norm", "unsaved_state_test")
class UnsavedState(LayerNorm):
    """A norm whose shift is a plain tensor attribute: random, and not in the state dict."""

    @extend_arguments(LayerNorm.__init__)
    def __init__(self, **arguments):
        super().__init__(**arguments)
        self.shift = torch.randn(arguments["d_model"])

    def forward(self, x):
        return super().forward(x) + self.shift


BROKEN = [  # (check, overrides, what the blame names)
    ("forward", ["model=gpt2_tiny", "model.ffn.block=overflows_test"], "decoder.layers.0.ffn (model.layer.nodes.ffn"),
    ("causality", ["model=gpt2_tiny", "model.attention.block=peek_ahead_test"], "decoder.layers.0.attn"),
    ("padding_right", ["model=bert_tiny", "model.ffn.block=mixes_positions_test"], "encoder.layers.0.ffn"),
    ("padding_left", ["model=gpt2_tiny", "model.ffn.block=mixes_positions_test"], "decoder.layers.0.ffn"),
    ("cache", ["model=llama_tiny", "model.attention.block=forgetful_cache_test"], "decoder.layers.0.attn"),
    ("cache", ["model=t5_tiny", "model.attention.block=forgetful_cache_test"], "decoder.layers.0.attn"),
    ("backends", ["model=gpt2_tiny", "model.attention.block=dense_masks_only_test"], "decoder.layers.0.attn"),
    ("compile", ["model=gpt2_tiny", "model.norm.block=graph_break_test"], "decoder.layers.0.norm1"),
    ("state_dict", ["model=gpt2_tiny", "model.norm.block=unsaved_state_test"], "decoder.layers.0.norm1"),
    ("gradients", ["model=gpt2_tiny", "model.ffn.block=unused_parameter_test"], "decoder.layers.0.ffn"),
    ("determinism", ["model=gpt2_tiny", "model.norm.block=noisy_test"], "decoder.layers.0.norm1"),
    ("counts", ["model=gpt2_tiny", "model.ffn.block=device_sized_test"], None),
]


def test_every_check_has_a_broken_block_that_fails_it():
    """Each check of tfgraph.checks.equivalence (hf_export's failures are tested in tests/test_hf_interop.py)."""
    own = {name for name, c in CHECKS.items() if c.function.__module__ == "tfgraph.checks.equivalence"}
    assert {name for name, _, _ in BROKEN} == own and len(own) == 11


@pytest.mark.parametrize(("name", "overrides", "blamed"), BROKEN, ids=[f"{c}-{o[1]}" for c, o, _ in BROKEN])
def test_a_broken_block_fails_its_check_and_is_blamed(name, overrides, blamed):
    model = build([*overrides, *FAST])
    result = only(model, name)
    assert result.status == "fail", result
    if blamed is not None:
        assert result.blame is not None and result.blame.startswith(blamed), result.blame
    assert only(build([overrides[0], *FAST]), name).status == "pass"  # the preset itself passes


def test_failures_say_what_was_measured():
    peek = only(build(["model=gpt2_tiny", "model.attention.block=peek_ahead_test", *FAST]), "causality")
    assert peek.figure.startswith("max |diff| before t=3") and peek.value > 1e-3
    assert "peek_ahead_test at model.attention" in peek.blame
    unused = only(build(["model=gpt2_tiny", "model.ffn.block=unused_parameter_test", *FAST]), "gradients")
    assert "decoder.layers.0.ffn.gate: no gradient" in unused.detail
    breaks = only(build(["model=gpt2_tiny", "model.norm.block=graph_break_test", *FAST]), "compile")
    assert breaks.value >= 1 and "graph break" in breaks.figure
    forgetful = only(build(["model=llama_tiny", "model.attention.block=forgetful_cache_test", *FAST]), "cache")
    assert "greedy tokens equal" in forgetful.figure and forgetful.value > 1e-5


def test_checks_that_cannot_apply_are_skipped_with_the_reason():
    results = {r.name: r for r in run_checks(Subject(model=build(["model=bert_tiny", *FAST])),
                                             ["causality", "padding_left", "cache"])}  # fmt: skip
    assert all(r.status == "skip" for r in results.values())
    assert "bidirectional" in results["causality"].figure and "KV cache" in results["cache"].figure
    assert "position_ids" in results["padding_left"].figure
    no_cache = only(build(["model=gpt2_tiny", "model.attention.block=no_cache_check_test", *FAST]), "cache")
    assert no_cache.status == "skip" and "use_cache=False" in no_cache.figure


def test_a_check_that_raises_fails_with_the_error_and_one_that_skips_is_skipped(monkeypatch):
    def crashes(subject):
        raise RuntimeError("boom")

    def skips(subject):
        raise Skip("not for this model")

    monkeypatch.setitem(CHECKS, "crashes", tfgraph.checks.Check(name="crashes", summary="raises", function=crashes))
    monkeypatch.setitem(CHECKS, "skips", tfgraph.checks.Check(name="skips", summary="skips", function=skips))
    crashed, skipped = run_checks(Subject(model=build(["model=gpt2_tiny", *FAST])), ["crashes", "skips"])
    assert (crashed.status, crashed.figure) == ("fail", "raised RuntimeError: boom")
    assert (skipped.status, skipped.figure) == ("skip", "not for this model")


# ------------------------------------------------------------------------------------------------ small size


def test_the_small_size_is_derived_from_the_config_and_overridable():
    llama = small_config(tfgraph.config.plain(tfgraph.compose(["model=llama"]).model))
    assert (llama["d_model"], llama["n_heads"], llama["n_kv_heads"], llama["d_ff"]) == (64, 4, 1, 256)
    assert (llama["n_layers"], llama["vocab_size"], llama["max_len"]) == (2, 512, 64)
    t5 = tfgraph.config.plain(tfgraph.compose(["model=t5", "model.pattern=[{}, {}, {}]"]).model)
    small = small_config(t5, {"d_model": 32, "n_decoder_layers": 1})
    assert (small["d_model"], small["d_ff"], small["n_layers"], small["n_decoder_layers"]) == (32, 128, 3, 1)
    tfgraph.build_model(small_config(tfgraph.config.plain(tfgraph.compose(["model=gpt2"]).model)))


def test_check_from_python_runs_every_check_and_writes_json(tmp_path):
    out = tmp_path / "check.json"
    cfg = tfgraph.compose(["model=gpt2_tiny", "check.compile_backend=aot_eager", f"check.json={out}",
                           "check.n_layers=1", "check.skip=[state_dict]"], config_name="check")  # fmt: skip
    report = tfgraph.check(cfg)
    assert report.ok and [r.name for r in report.results] == [n for n in CHECKS if n != "state_dict"]
    written = json.loads(out.read_text())
    assert written["ok"] is True and written["results"][0] == {
        "name": "forward", "status": "pass", "figure": "output [2, 12, 512], all finite", "value": None,
        "blame": None, "detail": "",
    }  # fmt: skip
    text = str(report)
    assert text.splitlines()[0].split() == ["check", "result", "figure"]
    assert (
        text.endswith(f"{len(CHECKS) - 1} passed, 0 failed, 0 skipped")
        and "d_model 64, 4 heads, d_ff 256, 1 layer, vocab 512" in text
    )
    shown = show(tfgraph.compose(["model=gpt2_tiny"], config_name="show")).splitlines()
    params, flops = (next(line for line in shown if line.startswith(s)) for s in ("params: ", "forward FLOPs"))
    assert report["counts"].figure == f"{params}; {flops.replace('forward FLOPs per token', 'FLOPs/token')}"


def test_a_failure_is_reported_not_raised_from_python():
    cfg = tfgraph.compose(["model=gpt2_tiny", "model.attention.block=peek_ahead_test", "check.only=[causality]"],
                          config_name="check")  # fmt: skip
    report = check(cfg)
    assert not report.ok and [r.name for r in report.failed] == ["causality"]
    assert "blame: decoder.layers.0.attn (model.layer.nodes.attn: attention peek_ahead_test" in str(report)


@pytest.mark.parametrize(
    ("override", "path", "says"),
    [
        ("check.d_modle=32", "check.d_modle", "did you mean check.d_model"),  # Hydra's own error
        ("+check.d_modle=32", "check.d_modle", "did you mean 'd_model'"),
        ("check.only=[cach]", "check.only[0]", "did you mean 'cache'"),
        ("check.batch=1", "check.batch", "at least 2"),
        ("seed=x", "seed", "expected an integer"),
        ("check.json=/no/such/folder/c.json", "check.json", "no folder /no/such/folder"),
        ("model=t5_tiny task=causal_lm", "model.topology", "task causal_lm does not fit"),
        (
            "check.n_heads=3 check.d_model=64",
            "model.n_heads",
            "(at the check's small size: check.d_model=64, check.n_heads=3",
        ),
    ],
)
def test_check_options_are_checked(override, path, says):
    with pytest.raises(tfgraph.ConfigError) as err:
        check(tfgraph.compose(["model=gpt2_tiny", *override.split()], config_name="check"))  # before any check runs
    assert path in str(err.value) and says in str(err.value)


# ------------------------------------------------------------------------------------------------ the command


def tfgraph_check(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "tfgraph-check"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "tfgraph.cli.check"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


PLUGIN = """
import tfgraph
from tfgraph.blocks.attention import MultiHeadAttention


@tfgraph.register("attention", "peeking")
class Peeking(MultiHeadAttention):
    def forward(self, x, ctx, cache=None):
        return super().forward(x, ctx, cache) + 0.5 * x.roll(-1, dims=1)
"""


@pytest.mark.slow
def test_command_exits_1_on_a_failed_check_and_2_on_a_config_mistake(tmp_path):
    (tmp_path / "peeking_blocks.py").write_text(PLUGIN)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    failed = tfgraph_check("plugins=[peeking_blocks]", "model.attention.block=peeking", "check.only=[causality]",
                           "check.json=out.json", cwd=tmp_path, env=env)  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    assert "causality      fail" in failed.stdout or "causality  fail" in failed.stdout
    assert (
        "blame: decoder.layers.0.attn (model.layer.nodes.attn: attention peeking at model.attention)" in failed.stdout
    )
    assert failed.stderr.strip().endswith("error: 1 check failed: causality")
    assert json.loads((tmp_path / "out.json").read_text())["results"][0]["status"] == "fail"
    mistake = tfgraph_check("check.onlyy=[cache]", cwd=tmp_path)
    assert mistake.returncode == 2 and "check.onlyy" in mistake.stderr and "Traceback" not in mistake.stderr


def readme_section() -> str:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    start = text.index("## Check your architecture")
    return text[start : text.index("\n## ", start + 1)]


def rows(output: str) -> list[str]:
    """The check names, results and blame lines of a report (the figures measured on another machine differ)."""
    kept = []
    for line in output.splitlines():
        words = line.split()
        if words[:1] == ["blame:"] or line.startswith(("error:", "checked:")) or line.endswith("skipped"):
            kept.append(line.strip())
        elif len(words) > 1 and words[1] in ("pass", "fail", "skip"):
            kept.append(" ".join(words[:2]))
    return kept


@pytest.mark.slow
def test_the_readme_example_runs_as_shown(tmp_path):
    """The section's plugin and layer graphs written out as the README shows them, its commands run as shown."""
    section = readme_section()
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)
    for language, body in blocks:
        if language in ("python", "yaml"):
            path = tmp_path / body.splitlines()[0].removeprefix("# ").split(":")[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
    commands = [body.strip() for language, body in blocks if language == "bash"]
    outputs = [body for language, body in blocks if language == "text"]
    assert len(commands) == len(outputs) == 2
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # the venv's
    for command, shown in zip(commands, outputs, strict=True):
        assert len(rows(shown)) >= 12
        result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                                env=env)  # fmt: skip
        assert result.returncode == (1 if "error:" in shown else 0), result.stderr
        assert rows(result.stdout + result.stderr) == rows(shown)


def test_a_broken_block_in_one_layer_of_a_pattern_is_blamed_at_its_pattern_entry():
    model = build(["model=llama_tiny", "model.max_len=64", "model.pattern=[{}, {attention: {block: peek_ahead_test}}]"])
    result = only(model, "causality")
    assert result.status == "fail"
    assert (
        result.blame
        == "decoder.layers.1.attn (model.layer.nodes.attn: attention peek_ahead_test at model.pattern[1].attention)"
    )
