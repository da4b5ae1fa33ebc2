"""tfgraph-show: the pure ``show`` function and the console entry point."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tfgraph
from tests.conftest import needs_dot
from tfgraph.show import GraphvizMissing, show


def _show(*overrides: str, name: str | None = None) -> str:
    return show(tfgraph.compose(list(overrides), config_name="show"), name=name)


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tfgraph.cli.show", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _params_line(text: str) -> int:
    (match,) = re.findall(r"^params: (\d+)$", text, flags=re.MULTILINE)
    return int(match)


def _flops_per_token(text: str) -> int:
    (match,) = re.findall(r"^forward FLOPs per token: ([\d,]+) ", text, flags=re.MULTILINE)
    return int(match.replace(",", ""))


def _built(*overrides: str) -> torch.nn.Module:
    with torch.device("meta"):
        return tfgraph.build_model(tfgraph.compose(list(overrides), config_name="show").model)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=gpt2_tiny"],
        ["model=t5_tiny", "model.n_layers=3", "model.n_decoder_layers=1"],
        ["model=bert_tiny"],
        ["model=llama_tiny", "model/position=alibi", "model/norm=layernorm", "model/layer=parallel", "model/ffn=moe"],
    ],
)
def test_params_line_is_the_build_model_count(overrides: list[str]) -> None:
    assert _params_line(_show(*overrides)) == _built(*overrides).num_parameters()


def test_full_size_gpt2_is_shown_from_the_meta_device() -> None:
    text = _show("model=gpt2", name="gpt2")
    assert _params_line(text) == 124_439_808
    assert text.splitlines()[1].startswith("gpt2: decoder_only")
    assert "layers 0-11 (x12), each" in text
    assert "head: lm_head (head; bias=False, rescale=False), tied to embedding" in text
    assert "at seq_len 1024" in text


def gpt2_params(d: int, vocab: int = 50257, max_len: int = 1024, layers: int = 12, d_ff: int = 3072) -> int:
    """GPT-2's parameters by hand: token and position embeddings, per layer attention (4 d x d and their biases),
    the FFN (two matrices and biases) and two layernorms, a final layernorm; the head is tied."""
    layer = 4 * d * d + 4 * d + 2 * d * d_ff + d_ff + d + 2 * 2 * d
    return vocab * d + max_len * d + layers * layer + 2 * d


def test_a_model_too_big_for_any_memory_is_counted_without_allocating_it() -> None:
    assert gpt2_params(768) == 124_439_808  # the formula, on the model above
    text = _show("model=gpt2", "model.d_model=1200000", "model.vocab_size=10000000")  # 325 TB of float32 weights
    assert _params_line(text) == gpt2_params(1_200_000, vocab=10_000_000) == 81_209_834_436_864


def test_flops_per_token_of_gpt2_tiny_matches_the_matmul_count() -> None:
    d, layers, vocab, seq_len = 64, 2, 512, 256
    model = _built("model=gpt2_tiny")
    embedding = model.embedding.weight.numel() + sum(p.numel() for p in model.decoder.position.parameters())
    non_embedding = model.num_parameters() - embedding
    flops = _flops_per_token(_show("model=gpt2_tiny"))
    assert 1.5 * 2 * non_embedding < flops < 4 * 2 * non_embedding
    # 2 FLOPs per weight of every matmul (tied head included), plus q.k and att.v over the full T x T scores
    expected = 2 * non_embedding + 2 * vocab * d + layers * 4 * seq_len * d
    assert flops == pytest.approx(expected, rel=0.02)


def test_seq_len_changes_only_the_attention_flops() -> None:
    short = _flops_per_token(_show("model=gpt2_tiny", "seq_len=128"))
    long = _flops_per_token(_show("model=gpt2_tiny", "seq_len=256"))
    assert long - short == 2 * 4 * (256 - 128) * 64


def test_mixture_of_experts_is_counted_on_a_real_cpu_run_when_small() -> None:
    text = _show("model=llama_tiny", "model/ffn=moe")
    assert "counted on a CPU run" in text and "MixtureOfExperts" in text
    (row,) = [line for line in text.splitlines() if "ffn: moe (ffn;" in line]
    d, d_ff, experts, top_k = 64, 128, 8, 2
    assert row.split()[-1] == f"{d * experts * 2 + top_k * 3 * 2 * d * d_ff:,}"  # router + top_k gated experts


def test_flops_of_a_large_mixture_of_experts_are_not_made_up() -> None:
    text = _show("model=llama", "model/ffn=moe", "model.n_layers=1")
    assert "forward FLOPs per token: n/a (" in text
    assert "FLOPs/token" not in text.splitlines()[0]


def test_dot_has_every_node_of_every_layer_graph(tmp_path: Path) -> None:
    out = tmp_path / "t5.dot"
    params = _built("model=t5_tiny").num_parameters()
    assert _show("model=t5_tiny", "format=dot", f"out={out}") == f"wrote {out}\nparams: {params}"
    source = out.read_text()
    model = _built("model=t5_tiny")
    for stack in ("encoder", "decoder"):
        spec = getattr(model, stack).layers[0].spec
        for node in spec.nodes:
            assert f'{stack}0_{node.name} [label="{node.name}\\n' in source
            for source_name in node.inputs:
                assert f"{stack}0_{source_name} -> {stack}0_{node.name}" in source
    assert "encoder_final_norm -> decoder0_memory" in source
    assert source.startswith("digraph")


def test_bad_show_options_are_config_errors() -> None:
    with pytest.raises(tfgraph.ConfigError, match=r"format: .*'jpg'") as err:
        _show("model=gpt2_tiny", "format=jpg", "seq_len=1000")
    assert "seq_len" in str(err.value) and "model.max_len (256)" in str(err.value)


def test_missing_graphviz_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(GraphvizMissing, match="apt-get install graphviz"):
        _show("model=gpt2_tiny", "format=png", f"out={tmp_path / 'x.png'}")
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------------------------ the command


def test_command_prints_the_tree_and_writes_nothing(tmp_path: Path) -> None:
    result = _cli("model=gpt2_tiny", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _params_line(result.stdout) == _built("model=gpt2_tiny").num_parameters()
    assert "gpt2_tiny: decoder_only" in result.stdout
    assert list(tmp_path.iterdir()) == []  # no outputs/, no .hydra/, no show.log


@needs_dot
def test_command_renders_svg(tmp_path: Path) -> None:
    result = _cli(
        "model=t5_tiny", "model.n_layers=3", "model.n_decoder_layers=1", "format=svg", "out=t5.svg", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    params = _built("model=t5_tiny", "model.n_layers=3", "model.n_decoder_layers=1").num_parameters()
    assert result.stdout.strip() == f"wrote t5.svg\nparams: {params}"  # the contract's line, with a picture too
    assert _params_line(result.stdout) == params
    assert (tmp_path / "t5.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert [p.name for p in tmp_path.iterdir()] == ["t5.svg"]


def test_command_reports_an_unknown_option_without_traceback(tmp_path: Path) -> None:
    result = _cli("model=gpt2_tiny", "model/layer=does_not_exist", cwd=tmp_path)
    assert result.returncode != 0
    assert "model/layer" in result.stderr and "prenorm" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_command_reports_a_config_error_with_exit_code_2(tmp_path: Path) -> None:
    result = _cli("model=gpt2_tiny", "model.n_heads=5", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "model.d_model" in result.stderr and "model.n_heads" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_command_without_graphviz_says_what_to_install(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    result = _cli("model=gpt2_tiny", "format=png", cwd=tmp_path, env={**os.environ, "PATH": str(empty)})
    assert result.returncode == 1
    for hint in ("apt-get install graphviz", "brew install graphviz", "conda install graphviz", "format=dot"):
        assert hint in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["bin"]
