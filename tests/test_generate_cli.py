"""tfgraph-generate, tfgraph-attention and tfgraph.generate on checkpoints of a short training run: greedy with and
without the cache, seeded sampling, beam n-best with scores, streaming, the errors, the attention heatmaps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tfgraph
from tests.test_tasks import TOKENIZER, make_task
from tests.test_train import run_config
from tfgraph.cli import attention as attention_cli
from tfgraph.cli import generate as generate_cli
from tfgraph.data import build_tokenizer
from tfgraph.decoding import GenerateOutput, TextStreamer
from tfgraph.inference import attention_from_config, generate_from_config
from tfgraph.tasks import load_task
from tfgraph.train import train

pytestmark = pytest.mark.usefixtures("one_thread")  # one thread for tiny models (tests/conftest.py)

PROMPTS = {"causal_lm": "abc", "seq2seq": "badge"}  # TinyData's tokenizer knows the letters a to j


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A causal_lm (gpt2_tiny) and a seq2seq (transformer_tiny) checkpoint of 3 training steps on TinyData."""
    root = tmp_path_factory.mktemp("runs")
    paths = {}
    for task, model in (("causal_lm", "gpt2_tiny"), ("seq2seq", "transformer_tiny")):
        train(run_config(root / task, task, model, "~logger", "callbacks=checkpoints", "test=false"))
        paths[task] = root / task / "checkpoints" / "last.ckpt"
    return paths


class Output:
    """A text stream that remembers each write."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.writes)


def run_generate(ckpt: Path | str, *overrides: str) -> tuple[str, list, Output]:
    out = Output()
    cfg = tfgraph.compose([f"ckpt_path={ckpt}", "max_new_tokens=6", *overrides], config_name="generate")
    completions = generate_from_config(cfg, out)
    return out.text, completions, out


# ---------------------------------------------------------------------------------------------- tfgraph-generate


@pytest.mark.parametrize("task", ["causal_lm", "seq2seq"])
def test_greedy_gives_the_same_text_with_and_without_the_cache(checkpoints, task: str) -> None:
    prompt = PROMPTS[task]
    cached, completions, _ = run_generate(checkpoints[task], f"prompt={prompt}")
    uncached, _, _ = run_generate(checkpoints[task], f"prompt={prompt}", "use_cache=false")
    assert cached == uncached
    (completion,) = completions[0]
    # a causal LM prints its prompt and the continuation; a seq2seq model its output
    assert cached == (prompt if task == "causal_lm" else "") + completion.text + "\n"
    assert 1 <= len(completion.tokens) <= 6 and completion.score is None
    assert completion.text == load_task(checkpoints[task]).tokenizer.decode(completion.tokens)


@pytest.mark.parametrize("task", ["causal_lm", "seq2seq"])
def test_seeded_sampling_is_reproducible(checkpoints, task: str) -> None:
    draw = ["strategy=sample", "temperature=3.0", f"prompt={PROMPTS[task]}"]
    first, second, other = (run_generate(checkpoints[task], *draw, f"seed={s}")[1] for s in (0, 0, 1))
    assert first[0][0].tokens == second[0][0].tokens
    assert first[0][0].tokens != other[0][0].tokens


@pytest.mark.parametrize("task", ["causal_lm", "seq2seq"])
def test_beam_search_prints_the_n_best_with_their_scores(checkpoints, task: str) -> None:
    prompt = PROMPTS[task]
    text, completions, _ = run_generate(
        checkpoints[task], f"prompt={prompt}", "strategy=beam", "num_beams=4", "num_return_sequences=3"
    )
    row = completions[0]
    scores = [c.score for c in row]
    assert len(row) == 3 and scores == sorted(scores, reverse=True)
    lines = text.splitlines()
    assert len(lines) == 3
    for rank, (line, completion) in enumerate(zip(lines, row, strict=True), start=1):
        shown = (prompt if task == "causal_lm" else "") + completion.text
        assert line == f"{rank}. {completion.score:9.4f}  {shown}"


def test_several_prompts_and_a_prompt_file(checkpoints, tmp_path: Path) -> None:
    text, completions, _ = run_generate(checkpoints["seq2seq"], "prompt=[badge,abc]")
    assert len(completions) == 2
    assert text == "".join(f"> {p}\n{row[0].text}\n" for p, row in zip(["badge", "abc"], completions, strict=True))
    (tmp_path / "sources.txt").write_text("badge\n\nabc\n")
    from_file, _, _ = run_generate(checkpoints["seq2seq"], f"prompt_file={tmp_path}/sources.txt")
    assert from_file == text


def test_one_prompt_streams_a_piece_per_token(checkpoints) -> None:
    _, completions, out = run_generate(checkpoints["causal_lm"], "prompt=abc", "max_new_tokens=8")
    (completion,) = completions[0]
    tokenizer = load_task(checkpoints["causal_lm"]).tokenizer
    assert out.writes[0].startswith("abc") and out.writes[-1] == "\n"  # the prompt with the first piece, a newline last
    pieces = [out.writes[0][3:], *out.writes[1:-1]]
    # a write per generated character, as it comes (special tokens print nothing, and write nothing)
    assert pieces == [tokenizer.decode([t]) for t in completion.tokens if t not in tokenizer.special_ids]
    assert len(pieces) >= 2


def test_the_streamer_holds_back_an_incomplete_character() -> None:
    tokenizer = build_tokenizer("byte", [])
    text = "né 4€ ok"
    pieces: list[str] = []
    streamer = TextStreamer(tokenizer, pieces.append, prefix=tokenizer.encode("ça "))
    for token in tokenizer.encode(text):  # é is 2 bytes, € is 3: a byte alone does not decode
        streamer(torch.tensor([token]))
    streamer.end()
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert "é" in pieces and "€" in pieces  # written once whole, not byte by byte
    assert len(pieces) == len(text)


# --------------------------------------------------------------------------------------------------- errors


def generate_error(*overrides: str) -> str:
    cfg = tfgraph.compose(["max_new_tokens=4", *overrides], config_name="generate")
    out = Output()
    with pytest.raises(tfgraph.ConfigError) as err:
        generate_from_config(cfg, out)
    assert out.writes == []  # not even the prompt
    return str(err.value)


def test_clear_errors_name_the_key(checkpoints, tmp_path: Path) -> None:
    ckpt = f"ckpt_path={checkpoints['causal_lm']}"
    assert "ckpt_path: which checkpoint?" in generate_error("prompt=abc")
    assert f"ckpt_path: no checkpoint at {tmp_path}/missing.ckpt" in generate_error(
        f"ckpt_path={tmp_path}/missing.ckpt"
    )
    masked = tmp_path / "masked.ckpt"
    args = {"model": {}, "tokenizer": "{}"}  # shaped like a task's arguments: the task kind is what is wrong
    torch.save({"tfgraph": {"task": "masked_lm"}, "hyper_parameters": args, "state_dict": {}}, masked)
    message = generate_error(f"ckpt_path={masked}")
    assert "ckpt_path:" in message and "masked_lm checkpoint, which does not generate text" in message
    message = generate_error(ckpt, "strategy=beams")
    assert "strategy: expected one of greedy, sample, beam, got 'beams' (did you mean 'beam'?)" in message
    message = generate_error(ckpt, "prompt=abc", "temperature=0.5")
    assert "temperature: temperature applies only to strategy='sample'" in message
    assert "top_p: top_p must be in (0, 1]" in generate_error(ckpt, "strategy=sample", "top_p=2.0")
    assert "max_new_tokens:" in generate_error(ckpt, "strategy=beam", "max_new_tokens=100")
    assert "prompt_file: no such file" in generate_error(ckpt, f"prompt_file={tmp_path}/none.txt")
    assert "prompt: " in generate_error(f"ckpt_path={checkpoints['seq2seq']}", "prompt=")  # no source


def test_the_command_streams_to_stdout(checkpoints, tmp_path: Path) -> None:
    # trust_plugins: its data._target_ is tests.test_train.TinyData, which that process does not import
    args = [f"ckpt_path={checkpoints['causal_lm']}", "prompt=abc", "max_new_tokens=5", "trust_plugins=true"]
    done = subprocess.run(
        [sys.executable, "-m", "tfgraph.cli.generate", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    in_process = run_generate(checkpoints["causal_lm"], *args[1:])[0]
    assert done.stdout == in_process  # the generated text only: no logging on stdout
    assert list(tmp_path.iterdir()) == []  # and no run dir


@pytest.mark.parametrize(
    ("module", "args"), [(generate_cli, ["prompt=hi"]), (attention_cli, ["text=hi"])], ids=["generate", "attention"]
)
def test_the_commands_exit_2_on_a_config_error_without_a_traceback(module, args, monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [module.__name__, f"ckpt_path={tmp_path}/none.ckpt", *args])
    with pytest.raises(SystemExit) as raised:
        module.main()
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config") and f"ckpt_path: no checkpoint at {tmp_path}/none.ckpt" in err


# ----------------------------------------------------------------------------------------------- the Python API


def test_generate_api_on_text(checkpoints) -> None:
    ckpt = checkpoints["causal_lm"]
    task = load_task(ckpt)
    text = tfgraph.generate(ckpt, "abc", max_new_tokens=6)
    assert isinstance(text, str)
    assert run_generate(ckpt, "prompt=abc")[0] == "abc" + text + "\n"  # the command prints the prompt, too
    assert tfgraph.generate(task, "abc", max_new_tokens=6) == text
    assert task.generate("abc", 6) == "abc" + text  # the task's own method agrees
    both = tfgraph.generate(task, ["abc", "de"], max_new_tokens=4)
    assert isinstance(both, list) and both[0] == tfgraph.generate(task, "abc", max_new_tokens=4)
    beams = tfgraph.generate(task, ["abc", "de"], max_new_tokens=4, strategy="beam", num_return_sequences=2)
    assert [len(row) for row in beams] == [2, 2]
    pieces: list[str] = []
    assert tfgraph.generate(task, "abc", max_new_tokens=6, stream=pieces.append) == text == "".join(pieces)

    ids = torch.tensor([task.tokenizer.encode("abc")])
    out = tfgraph.generate(task, ids, max_new_tokens=6)
    assert isinstance(out, GenerateOutput)
    assert task.tokenizer.decode(out.sequences[0].tolist()) == text
    with pytest.raises(ValueError, match="needs a tokenizer"):
        tfgraph.generate(task.model, "abc", max_new_tokens=2)
    with pytest.raises(ValueError, match="masked_lm task does not generate"):
        tfgraph.generate(make_task("masked_lm", "bert_tiny"), "abc")


@pytest.mark.parametrize("preset", ["transformer_tiny", "gpt2_tiny"])
def test_generate_api_translates_as_validation_does(preset: str) -> None:
    task = make_task("seq2seq", preset, "model.n_decoder_layers=1", "model.init_std=0.2")
    source = TOKENIZER.encode("hello")
    batch = {"input_ids": torch.tensor([source]), "labels": torch.tensor([[7, 8, TOKENIZER.eos_id]])}
    (expected,) = task.translate(batch)  # greedy, at most 2 * 3 + 8 = 14 tokens
    assert tfgraph.generate(task, "hello", max_new_tokens=14) == expected


# ---------------------------------------------------------------------------------------------- tfgraph-attention


def attention(*overrides: str) -> str:
    return attention_from_config(tfgraph.compose(list(overrides), config_name="attention"))


def test_attention_of_a_preset_writes_a_png_per_layer_and_the_top_attended_tokens(tmp_path: Path) -> None:
    report = attention("model=gpt2_tiny", "model.n_layers=3", "text=time flies like an arrow", f"out_dir={tmp_path}")
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == [f"decoder.layers.{i}.attn.png" for i in range(3)]
    assert all(f"wrote {tmp_path}/{name}" in report for name in pngs)
    for word in ("time", "flies", "like", "an", "arrow"):
        assert report.count(f"'{word}' -> ") == 3  # a line per token and layer
    assert report.count("'time' -> 'time' 1.00") == 3  # the first token of a decoder sees only itself

    only = attention("model=gpt2_tiny", "text=time flies", "layers=[1]", f"out_dir={tmp_path}/one")
    assert [p.name for p in (tmp_path / "one").glob("*.png")] == ["decoder.layers.1.attn.png"]
    assert "decoder.layers.0" not in only


def test_attention_of_a_checkpoint(checkpoints, tmp_path: Path) -> None:
    report = attention(f"ckpt_path={checkpoints['seq2seq']}", "text=badge", f"out_dir={tmp_path}")
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["encoder.layers.0.attn.png"]  # its encoder's 1 layer
    for letter in "badge":
        assert f"'{letter}' -> " in report


def test_attention_errors(checkpoints, tmp_path: Path) -> None:
    with pytest.raises(tfgraph.ConfigError, match="layers: no layer 5; the model's layers are 0 to 1"):
        attention("model=gpt2_tiny", "text=time flies", "layers=[0,5]", f"out_dir={tmp_path}")
    with pytest.raises(tfgraph.ConfigError, match="model: give either ckpt_path"):
        attention("model=gpt2_tiny", f"ckpt_path={checkpoints['seq2seq']}", "text=hi", f"out_dir={tmp_path}")
    with pytest.raises(tfgraph.ConfigError, match="ckpt_path: which checkpoint"):
        attention("text=hi", f"out_dir={tmp_path}")
    with pytest.raises(tfgraph.ConfigError, match="text: give the text"):
        attention("model=gpt2_tiny", f"out_dir={tmp_path}")
    with pytest.raises(tfgraph.ConfigError, match=r"text: 9 tokens, more than the model's max_len \(8\)"):
        attention("model=gpt2_tiny", "model.max_len=8", "text=a b c d e f g h i", f"out_dir={tmp_path}")
