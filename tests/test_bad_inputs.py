"""Bad input through the real commands: every case is one command line a user could type, with a mistake in it.

Each must end in exit code 2 (3 for a diverged run), print ``error: ...`` on stderr with no traceback and no
Hydra boilerplate, and name what is wrong: the config path (``model.norm.eps``), the file and line of a malformed
data file, or the checkpoint path. The commands run in this process (``tfgraph.cli.<name>.main()`` with
``sys.argv`` set), which is what the console scripts call; tests/test_command_errors.py and
tests/test_checkpoint_safety.py run some of them as separate processes too.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.test_command_errors import BOILERPLATE, run_command

QUICK = [  # a tiny run, whatever it trains on
    "model.n_layers=1",
    "trainer.max_steps=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "sample.max_new_tokens=0",
    "test=false",
    "~logger",
    "callbacks=checkpoints",
]
TEXT = "ROMEO: But soft, what light through yonder window breaks?\n" * 40


@dataclass(frozen=True)
class Case:
    """A command line and what its error must say. ``{tmp}``, ``{lm}``, ``{s2s}`` and ``{fixtures}`` in the
    arguments and the expected texts stand for the test's dir, the two checkpoints and tests/fixtures/data."""

    command: str
    args: tuple[str, ...]
    says: tuple[str, ...]  # texts the error message must hold (config paths, file:line, ...)
    code: int = 2


def case(command: str, *args: str, says: str | tuple[str, ...], code: int = 2) -> Case:
    return Case(command, args, (says,) if isinstance(says, str) else says, code)


def train(*args: str, says: str | tuple[str, ...]) -> Case:
    return case("train", *QUICK, *args, says=says)


SHOW = [
    case("show", "model/norm=rmsnrom", says=("model/norm", "did you mean 'rmsnorm'")),
    case("show", "model=lama_tiny", says=("model", "llama_tiny")),
    case("show", "model.nosuchkey=1", says="model.nosuchkey"),
    case("show", "model.d_model=[1", says="model.d_model"),
    case("show", "model=gpt2_tiny", "model.n_heads=5", says="model.n_heads"),
    case("show", "model=gpt2_tiny", "model.d_model=0", says="model.d_model"),
    case("show", "model=gpt2_tiny", "model.n_layers=-1", says="model.n_layers"),
    case("show", "model=gpt2_tiny", "model.max_len=0", says="model.max_len"),
    case("show", "model=gpt2_tiny", "model.dropout=1.5", says="model.dropout"),
    case("show", "model=gpt2_tiny", "model.d_model=abc", says="model.d_model"),
    case("show", "model=llama_tiny", "model.n_kv_heads=3", says="model.n_kv_heads"),
    case("show", "model=gpt2_tiny", "+model.norm.eps=-1", says=("model.norm.eps", "positive")),
    case("show", "model=gpt2_tiny", "+model.attention.softmax_scale=0", says="model.attention.softmax_scale"),
    case("show", "model=gpt2_tiny", "+model.attention.softmax_scale=-1", says="model.attention.softmax_scale"),
    case("show", "model=gpt2_tiny", "model.norm.block=rmsnrom", says=("model.norm.block", "rmsnorm")),
    case("show", "model=gpt2_tiny", "model.norm.block=multihead", says="model.norm.block"),
    case("show", "model=gpt2_tiny", "+model.attention.biass=false", says=("model.attention.biass", "bias")),
    case("show", "model=gpt2_tiny", "model/attention=sliding_window", "model.attention.window=0", says="window"),
    case("show", "model=llama_tiny", "model.position.base=-10", says="model.position.base"),
    case("show", "model=gpt2_tiny", "model.pattern=[{attention: {block: nosuch}}]", says="model.pattern[0]"),
    case(
        "show",
        "model=llama_tiny",
        "model.pattern=[{attention: {block: sliding_window, window: 8, nosuch: 1}}, {}]",
        says="model.pattern[0].attention.nosuch",
    ),
    case("show", "model=gpt2_tiny", "model.layer.nodes.drop1={kind: position, block: rope, in: attn}", says="drop1"),
    case("show", "model=gpt2_tiny", "model.layer.nodes.ffn.in=nowhere", says=("model.layer.nodes.ffn", "nowhere")),
    case("show", "model=gpt2_tiny", "plugins=[no_such_plugin_module]", says="plugins[0]"),
    case("show", "model=gpt2_tiny", "format=jpg", says="format"),
]

TRAIN = [
    case("train", "model/norm=rmsnrom", says=("model/norm", "did you mean 'rmsnorm'")),
    case("train", "logger=comet", says=("logger", "csv")),
    case("train", "task=causal", says=("task", "causal_lm")),
    case("train", "trainer.max_step=100", says=("trainer.max_step", "max_steps")),
    train("+trainer.max_step=100", says=("trainer.max_step", "max_steps")),
    train("trainer.max_steps=-5", says="trainer.max_steps"),
    train("optimizer.lr=-1", says="optimizer.lr"),
    train("scheduler.warmup_steps=-1", says="scheduler.warmup_steps"),
    train("optimized_mode=maximum", says="optimized_mode"),
    train("optimized_metric=val/nosuch", says="optimized_metric"),
    train("max_params=-3", says="max_params"),
    train("seed=abc", says="seed"),
    train("optimizer.betas=[0.9]", says="optimizer.betas"),
    train("sample.max_new_tokens=-5", says="sample.max_new_tokens"),
    train("sample.temperature=-1", says="sample.temperature"),
    train("trust_plugins=maybe", says="trust_plugins"),
    train("model=bert_tiny", says="model.topology"),
    train("task=seq2seq", says="data"),
    train("data.batch_size=0", says="data.batch_size"),
    train("data=text", "data.path=null", says="data.path"),
    train("data=text", "data.path={tmp}/no_such.txt", says=("data.path", "no_such.txt")),
    train("data=text", "data.path={tmp}/book.txt", "data.tokenizer=bpee", says=("data.tokenizer", "bpe")),
    train("data=text", "data.path={tmp}/book.txt", "data.block_size=1", says="data.block_size"),
    train("data=text", "data.path={tmp}/empty.txt", says="empty.txt"),
    train("data=text", "data.path={tmp}/tiny.txt", "data.block_size=32", says="tiny.txt"),
    train("task=seq2seq", "model=transformer_tiny", "data=pairs", "data.path={tmp}/no.tsv", says="data.path"),
    train("task=seq2seq", "model=transformer_tiny", "data=pairs", "data.path={fixtures}/pairs_bad.tsv", says=":2"),
    train("task=token_classification", "model=bert_tiny", "data=conll", "data.path={tmp}/no.conll", says="data.path"),
    train("task=token_classification", "model=bert_tiny", "data=conll", "data.path={tmp}/xper.conll", says=":2"),
    train(
        "task=sequence_classification", "model=bert_tiny", "data=labeled", "data.path={tmp}/no.csv", says="data.path"
    ),
    train(
        "task=sequence_classification",
        "model=bert_tiny",
        "data=labeled",
        "data.path={fixtures}/labeled_bad.csv",
        says="labeled_bad.csv:3",
    ),
    train("ckpt_path={tmp}/no_such.ckpt", says=("ckpt_path", "no_such.ckpt")),
    train("ckpt_path={tmp}/text.ckpt", says=("ckpt_path", "text.ckpt")),
    train("ckpt_path={tmp}/truncated.ckpt", says=("ckpt_path", "truncated.ckpt")),
    train("ckpt_path={tmp}/evil.ckpt", says=("ckpt_path", "evil.ckpt")),
    train("ckpt_path={tmp}/target.ckpt", says=("ckpt_path", "_target_")),
    case("train", "-m", *QUICK, "model/norm=layernorm,rmsnrom", says=("model/norm", "rmsnrom")),
    train("+optimizer.capturable=true", says=("optimizer.capturable", "refused by AdamW on cpu")),
    case("train", "data=5", says=("data: 'data=5' gives 5, not an option's name", "shakespeare_char")),
    case("train", "model=null", says=("model: 'model=null'", "~model", "gpt2_tiny")),
    train("trainer.max_steps=${oc.env:TFGRAPH_UNSET_VAR_X}", says=("trainer.max_steps", "'TFGRAPH_UNSET_VAR_X' not")),
    # read only after training (and not at all with max_new_tokens=0): refused before it starts all the same
    train("sample.prompt=${oc.env:TFGRAPH_UNSET_VAR_X}", says=("sample.prompt: cannot resolve", "TFGRAPH_UNSET_VAR_X")),
    train("paths.output_dir={tmp}/book.txt/run", says=("paths.output_dir", "{tmp}/book.txt/run", "Not a directory")),
    # a resumed run takes these from its checkpoint: given otherwise, each differing key is named
    train(
        "ckpt_path={lm}",
        "optimizer.lr=0.5",
        says=("optimizer.lr: given 0.5, but the checkpoint has 0.003", "init_from"),
    ),
    train("ckpt_path={lm}", "optimizer=sgd", says="optimizer.name: given 'sgd', but the checkpoint has 'adamw'"),
    train("ckpt_path={lm}", "scheduler.warmup_steps=7", says="scheduler.warmup_steps: given 7, but the checkpoint has"),
    train("ckpt_path={lm}", "model.n_layers=3", says="model.n_layers: given 3, but the checkpoint has 1"),
    train(
        "ckpt_path={lm}",
        "data=text",
        "data.path={tmp}/book.txt",
        "data.block_size=8",
        says="data.block_size: given 8, but the checkpoint has 16",
    ),
    # 69 billion parameters (256 GiB of weights, 1 TiB to train): refused before the data is read, none allocated
    train("model.d_model=131072", "model.n_heads=128", says=("model: 68,821,713,152 parameters", "memory available")),
]

EVAL = [
    case("eval", "hydra.run.dir={tmp}/eval", says="ckpt_path"),
    case("eval", "hydra.run.dir={tmp}/eval", "ckpt_path={tmp}/no_such.ckpt", says="no_such.ckpt"),
    case("eval", "hydra.run.dir={tmp}/eval", "ckpt_path={tmp}", says="ckpt_path"),
    case("eval", "hydra.run.dir={tmp}/eval", "ckpt_path={tmp}/empty.ckpt", says="empty.ckpt"),
    case("eval", "hydra.run.dir={tmp}/eval", "ckpt_path={tmp}/text.ckpt", says="text.ckpt"),
    case("eval", "hydra.run.dir={tmp}/eval", "ckpt_path={tmp}/truncated.ckpt", says="truncated.ckpt"),
    case("eval", "hydra.run.dir={tmp}/eval", "ckpt_path={tmp}/other.ckpt", says="other.ckpt"),
    case("eval", "hydra.run.dir={tmp}/eval", "ckpt_path={tmp}/evil.ckpt", says="evil.ckpt"),
    case("eval", "hydra.run.dir={tmp}/eval", "ckpt_path={tmp}/newer.ckpt", says=("newer.ckpt", "newer")),
    case("eval", "hydra.run.dir={tmp}/eval", "ckpt_path={tmp}/target.ckpt", says="_target_"),
    case("eval", "hydra.run.dir={tmp}/eval", "ckpt_path={tmp}/interpolation.ckpt", says="${"),
    case("eval", "hydra.run.dir={tmp}/eval", "ckpt_path={tmp}/plugin.ckpt", says=("plugins", "trust_plugins")),
    case("eval", "hydra.run.dir={tmp}/eval", "ckpt_path={lm}", "split=train", says="split"),
    case("eval", "hydra.run.dir={tmp}/eval", "ckpt_path={lm}", "+data.batch_size=0", says="data.batch_size"),
    case("eval", "hydra.run.dir={tmp}/eval", "ckpt_pth={lm}", says="ckpt_pth"),
]

GENERATE = [
    case("generate", "ckpt_path={lm}", "max_new_tokens=abc", says="max_new_tokens"),
    case("generate", "ckpt_path={lm}", "max_new_tokens=0", says="max_new_tokens"),
    case("generate", "ckpt_path={lm}", "device=cpux", says=("device", "cpux")),
    case("generate", "ckpt_path={lm}", "strategy=beams", says=("strategy", "beam")),
    case("generate", "ckpt_path={lm}", "strategy=sample", "temperature=-1", says="temperature"),
    case("generate", "ckpt_path={lm}", "strategy=sample", "top_p=2", says="top_p"),
    case("generate", "ckpt_path={lm}", "strategy=sample", "top_k=0", says="top_k"),
    case("generate", "ckpt_path={lm}", "temperature=0.5", says="temperature"),
    case("generate", "ckpt_path={lm}", "num_return_sequences=0", says="num_return_sequences"),
    case("generate", "ckpt_path={lm}", "strategy=beam", "num_beams=0", says="num_beams"),
    case("generate", "ckpt_path={lm}", "repetition_penalty=-1", says="repetition_penalty"),
    case("generate", "ckpt_path={lm}", "prompt_file={tmp}/no_prompts.txt", says="prompt_file"),
    case(
        "generate",
        "ckpt_path={lm}",
        "prompt_file={tmp}/latin1.txt",
        says=("prompt_file: {tmp}/latin1.txt:2: not valid UTF-8 (byte 0xe9 at offset 16)", "save the prompts as UTF-8"),
    ),
    case("generate", "ckpt_path={lm}", "nosuchkey=1", says="nosuchkey"),
    case("generate", "ckpt_path={tmp}/text.ckpt", says="text.ckpt"),
    case("generate", "ckpt_path={tmp}/evil.ckpt", says="evil.ckpt"),
    case("generate", "ckpt_path={tmp}/plugin.ckpt", says="trust_plugins"),
]

ATTENTION = [
    case("attention", "model=gpt2_tiny", says="text"),
    case("attention", "model=gpt2_tiny", "text=hello", "layers=[9]", "out_dir={tmp}/maps", says="layers"),
    case("attention", "model=gpt2_tiny", "ckpt_path={lm}", "text=hello", says="model"),
    case("attention", "model=gpt2_tiny", "text=hello", "tokenizer=nosuch", says="tokenizer"),
    case("attention", "model=gpt2_tiny", "text=hello", "device=cpux", says="device"),
    case("attention", "ckpt_path={tmp}/truncated.ckpt", "text=hello", says="truncated.ckpt"),
    case("attention", "ckpt_path={tmp}/target.ckpt", "text=hello", says="_target_"),
]

CASES = SHOW + TRAIN + EVAL + GENERATE + ATTENTION


def test_the_suite_has_at_least_sixty_bad_inputs() -> None:
    assert len(CASES) >= 60 and len(set(CASES)) == len(CASES)


def test_a_model_over_the_memory_available_is_refused_before_its_weights_exist(monkeypatch) -> None:
    import tfgraph
    from tfgraph import trainer as trainer_module
    from tfgraph.registry import ConfigError
    from tfgraph.trainer import build_trainer, check_memory

    trainer = build_trainer(tfgraph.compose(QUICK))
    monkeypatch.setattr(trainer_module, "available_memory", lambda: 10 * 2**20)
    million = 1_000_000  # 3.8 MiB of float32 weights; with AdamW's two states and the gradients 15.3 MiB
    with pytest.raises(ConfigError) as info:
        check_memory(million, trainer, {"name": "adamw"}, "counted on meta")
    assert info.value.problems == [
        (
            "model",
            "1,000,000 parameters (counted on meta) need 3.8 MiB for their float32 weights, 15.3 MiB to train on the "
            "CPU with adamw (32-true: weights, gradients and 2 states), but this machine has 10.0 MiB of memory "
            "available: make the model smaller (model.d_model, model.n_layers, model.d_ff, model.vocab_size)",
        )
    ]
    check_memory(million, trainer, {"name": "sgd", "momentum": 0.0}, "")  # 7.6 MiB: weights and gradients
    monkeypatch.setattr(trainer_module, "available_memory", lambda: 16 * 2**20)
    check_memory(million, trainer, {"name": "adamw"}, "")
    monkeypatch.setattr(trainer_module, "available_memory", lambda: None)  # memory unknown: nothing refused
    check_memory(10**15, trainer, {"name": "adamw"}, "")


# ------------------------------------------------------------------------------------------------ the inputs


class Marker:
    """A pickle whose loading would write a marker file (``weights_only`` must refuse it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "pwned"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files the cases read: two real checkpoints and every kind of bad file."""
    from tfgraph import compose
    from tfgraph.train import train as train_run

    tmp = tmp_path_factory.mktemp("bad_inputs")
    (tmp / "book.txt").write_text(TEXT)
    (tmp / "empty.txt").write_text("")
    (tmp / "tiny.txt").write_text("ab\n")
    (tmp / "xper.conll").write_text("EU B-ORG\nrejects X-PER\n\nGerman B-MISC\n")
    (tmp / "latin1.txt").write_bytes("first prompt\ncafé au lait\n".encode("latin-1"))
    lm_dir = tmp / "lm"
    train_run(
        compose(
            [*QUICK, "data=text", f"data.path={tmp / 'book.txt'}", "data.block_size=16", f"paths.output_dir={lm_dir}"]
        )
    )
    lm = lm_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(lm, weights_only=True)

    (tmp / "empty.ckpt").write_bytes(b"")
    (tmp / "text.ckpt").write_text("this is not a checkpoint\n")
    (tmp / "truncated.ckpt").write_bytes(lm.read_bytes()[:2000])
    torch.save({"a": 1}, tmp / "other.ckpt")
    with open(tmp / "evil.ckpt", "wb") as f:
        pickle.dump({"state_dict": Marker(tmp / "pwned")}, f)
    newer = {**checkpoint, "tfgraph": {**checkpoint["tfgraph"], "format": 99}}
    torch.save(newer, tmp / "newer.ckpt")
    params = checkpoint["hyper_parameters"]
    target = {**params, "data": {**params["data"], "_target_": "pathlib.Path.write_text"}}
    torch.save({**checkpoint, "hyper_parameters": target}, tmp / "target.ckpt")
    interpolation = {**params, "data": {**params["data"], "name": "${oc.env:HOME}"}}
    torch.save({**checkpoint, "hyper_parameters": interpolation}, tmp / "interpolation.ckpt")
    plugin = {**params, "model": {**params["model"], "plugins": ["no_such_evil_module"]}}
    torch.save({**checkpoint, "hyper_parameters": plugin}, tmp / "plugin.ckpt")
    return {"tmp": tmp, "lm": lm, "fixtures": Path(__file__).parent / "fixtures" / "data"}


@pytest.mark.parametrize(
    "bad", CASES, ids=[f"{c.command}:{' '.join(a for a in c.args if a not in QUICK)}" for c in CASES]
)
def test_a_bad_input_is_one_clear_error(
    bad: Case, inputs: dict[str, Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    def fill(text: str) -> str:
        for name, path in inputs.items():
            text = text.replace("{" + name + "}", str(path))
        return text

    args = [fill(arg) for arg in bad.args]
    if bad.command == "train":
        args.append(f"hydra.run.dir={tmp_path}/run")
        if "-m" in args:
            args.append(f"hydra.sweep.dir={tmp_path}/sweep")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_command(bad.command, args, monkeypatch, capsys)
    assert code == bad.code, err
    assert not any(text in err for text in BOILERPLATE), err
    assert err.lstrip().startswith("error:"), err
    for text in bad.says:
        assert fill(text) in err, err
    assert not (inputs["tmp"] / "pwned").exists()
    if "-m" in args:
        assert not any((tmp_path / "sweep").glob("*/.hydra")), "a sweep with a bad value must launch no job"
