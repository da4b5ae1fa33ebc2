"""Data mistakes named where they are: a data config's key (``data.batch_size: ...``), or a file and its line.

Settings are checked when a DataModule is built, before anything is read, and all problems of a config are
reported together; files are checked when it is set up, before they are read. The last tests go through the real
``tfgraph-train`` command, in this process: exit code 2, ``error: ...`` on stderr and no traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra.core.global_hydra import GlobalHydra

import tfgraph
from tfgraph.data import (
    ConllDataModule,
    DataConfigError,
    DataError,
    HFDataModule,
    LabeledDataModule,
    PairsDataModule,
    TextDataModule,
)
from tfgraph.data.checks import tag_problem
from tfgraph.data.readers import read_conll

FIXTURES = Path(__file__).parent / "fixtures" / "data"
TEXT = "ROMEO: But soft, what light through yonder window breaks?\n" * 20
MODULES = {
    "text": TextDataModule,
    "pairs": PairsDataModule,
    "conll": ConllDataModule,
    "labeled": LabeledDataModule,
    "hf": lambda **kw: HFDataModule(task="causal_lm", **kw),
}
GOOD = {  # a file each module reads
    "text": FIXTURES / "corpus" / "alpha.txt",
    "pairs": FIXTURES / "pairs.tsv",
    "conll": FIXTURES / "tags.conll",
    "labeled": FIXTURES / "labeled.csv",
    "hf": FIXTURES / "corpus" / "alpha.txt",
}


def problems(err: pytest.ExceptionInfo) -> dict[str, str]:
    """The (key -> message) problems of a DataConfigError, which is a ConfigError and a DataError too."""
    assert isinstance(err.value, tfgraph.ConfigError) and isinstance(err.value, DataError)
    return dict(err.value.problems)


# ------------------------------------------------------------------------------------------ missing files


@pytest.mark.parametrize("source", sorted(MODULES))
@pytest.mark.parametrize("key", ["path", "train_path", "val_path", "test_path"])
def test_a_missing_file_is_named_at_its_key(tmp_path: Path, source: str, key: str) -> None:
    missing = tmp_path / "no_such_file.dat"
    paths = {"path": str(missing)} if key == "path" else {"train_path": str(GOOD[source]), key: str(missing)}
    dm = MODULES[source](**paths)
    with pytest.raises(DataConfigError) as err:
        dm.setup()
    assert problems(err)[f"data.{key}"].startswith(f"{missing}: no such file")  # text and hf: "... or folder"


def test_every_missing_file_is_reported_at_once(tmp_path: Path) -> None:
    dm = PairsDataModule(
        train_path=str(tmp_path / "train.tsv"),
        val_path=str(tmp_path / "dev.tsv"),
        tokenizer_path=str(tmp_path / "tokenizer.json"),
    )
    with pytest.raises(DataConfigError) as err:
        dm.setup()
    assert problems(err) == {
        "data.train_path": f"{tmp_path / 'train.tsv'}: no such file",
        "data.val_path": f"{tmp_path / 'dev.tsv'}: no such file",
        "data.tokenizer_path": f"{tmp_path / 'tokenizer.json'}: no such file (a run saves its tokenizer as "
        "tokenizer.json in its dir)",
    }


def test_a_folder_or_an_empty_glob_where_a_file_is_expected(tmp_path: Path) -> None:
    with pytest.raises(DataConfigError) as err:
        PairsDataModule(path=str(tmp_path)).setup()
    assert problems(err) == {"data.path": f"{tmp_path}: a folder, not a file"}
    with pytest.raises(DataConfigError) as err:
        TextDataModule(path=str(tmp_path / "*.txt")).setup()
    assert problems(err) == {"data.path": f"{tmp_path / '*.txt'}: no file matches this pattern"}


@pytest.mark.parametrize("source", sorted(MODULES))
def test_no_path_asks_which_file(source: str) -> None:
    with pytest.raises(DataConfigError) as err:
        MODULES[source]().setup()
    message = problems(err)["data.path"]
    assert message.startswith("which file? give data.path=<") and "data.train_path=<" in message


def test_path_and_train_path_together_are_refused() -> None:
    with pytest.raises(DataConfigError) as err:
        LabeledDataModule(path=str(GOOD["labeled"]), train_path=str(GOOD["labeled"])).setup()
    assert problems(err) == {
        "data.train_path": "data.path and data.train_path both given: give exactly one (data.path to hold val "
        "and test out of it, data.train_path to read them from data.val_path and data.test_path)"
    }


# ------------------------------------------------------------------------------------- the settings


@pytest.mark.parametrize(
    ("make", "key", "message"),
    [
        (lambda: TextDataModule(batch_size=0), "batch_size", "expected a positive whole number, got 0"),
        (lambda: PairsDataModule(batch_size=2.5), "batch_size", "expected a positive whole number, got 2.5"),
        (lambda: LabeledDataModule(num_workers=-1), "num_workers", "expected a whole number, 0 or more, got -1"),
        (lambda: ConllDataModule(seed="x"), "seed", "expected a whole number, 0 or more, got 'x'"),
        (lambda: TextDataModule(val_fraction=1.5), "val_fraction", "expected a share in [0, 1), got 1.5"),
        (lambda: PairsDataModule(test_fraction=-0.1), "test_fraction", "expected a share in [0, 1), got -0.1"),
        (
            lambda: TextDataModule(block_size=1),
            "block_size",
            "expected a whole number of at least 2 (a window holds a token and the one after it, which it "
            "predicts), got 1",
        ),
        (
            lambda: HFDataModule(task="causal_lm", block_size="big"),
            "block_size",
            "expected a whole number of at least 2 (a window holds a token and the one after it, which it "
            "predicts), got 'big'",
        ),
        (
            lambda: PairsDataModule(max_len=1),
            "max_len",
            "expected a whole number of at least 2 (a target token and <eos>), got 1",
        ),
        (
            lambda: LabeledDataModule(max_len=1),
            "max_len",
            "expected a whole number of at least 2 (<bos> and a token), got 1",
        ),
        (lambda: ConllDataModule(max_len=0), "max_len", "expected a positive whole number, got 0"),
        (
            lambda: TextDataModule(tokenizer="bpee"),
            "tokenizer",
            "unknown tokenizer 'bpee': did you mean 'bpe'? expected one of 'byte', 'char', 'word', 'bpe', "
            "'wordpiece', 'unigram'",
        ),
        (
            lambda: TextDataModule(vocab_size=5),
            "vocab_size",
            "expected null or a whole number of at least 6 (more than the 5 special tokens), got 5",
        ),
        (
            lambda: TextDataModule(tokenizer="byte", vocab_size=300),
            "vocab_size",
            "a byte tokenizer has 261 ids; vocab_size=300 cannot apply (leave it null)",
        ),
        (
            lambda: TextDataModule(tokenizer="bpe", tokenizer_opts={"lowercase": True}),
            "tokenizer_opts",
            "unknown tokenizer_opts lowercase; its options: min_freq (of the bpe tokenizer)",
        ),
        (
            lambda: TextDataModule(tokenizer="word", tokenizer_opts={"min_freq": 0}),
            "tokenizer_opts.min_freq",
            "expected a positive whole number, got 0",
        ),
        (
            lambda: TextDataModule(tokenizer_json="{}", tokenizer_path="tokenizer.json"),
            "tokenizer_path",
            "give tokenizer_json or tokenizer_path, not both",
        ),
        (lambda: TextDataModule(split_lines="yes"), "split_lines", "expected true or false, got 'yes'"),
        (
            lambda: PairsDataModule(format="xml"),
            "format",
            "unknown format 'xml': expected one of 'jsonl', 'tsv' (or null)",
        ),
        (
            lambda: ConllDataModule(tag_column="last"),
            "tag_column",
            "expected a column number (0: the first, -1: the last), got 'last'",
        ),
        (
            lambda: PairsDataModule(source="copy", source_options={"n_train": 0}),
            "source_options.n_train",
            "expected a positive whole number, got 0",
        ),
        (
            lambda: HFDataModule(task=None),
            "task",
            "missing: choose the task, one of 'causal_lm', 'masked_lm', 'seq2seq', 'sequence_classification', "
            "'token_classification'",
        ),
        (
            lambda: HFDataModule(task="causal"),
            "task",
            "unknown task 'causal': did you mean 'causal_lm'? expected one of 'causal_lm', 'masked_lm', 'seq2seq', "
            "'sequence_classification', 'token_classification'",
        ),
    ],
)
def test_a_bad_setting_is_named_at_its_key(make: Any, key: str, message: str) -> None:
    with pytest.raises(DataConfigError) as err:
        make()
    assert problems(err) == {f"data.{key}": message}


def test_every_problem_of_a_data_config_is_reported_together_before_any_file_is_read(tmp_path: Path) -> None:
    with pytest.raises(DataConfigError) as err:  # no setup(): the missing file is not looked at yet
        TextDataModule(
            path=str(tmp_path / "missing.txt"),
            batch_size=0,
            block_size=1,
            tokenizer="bpee",
            val_fraction=0.6,
            test_fraction=0.6,
        )
    found = problems(err)
    assert list(found) == ["data.batch_size", "data.tokenizer", "data.block_size", "data.val_fraction"]
    assert found["data.val_fraction"] == (
        "val_fraction 0.6 and test_fraction 0.6 hold out 1.2 of the data, leaving nothing to train on: their sum "
        "must be under 1"
    )
    assert str(err.value).startswith("invalid config (4 problems):\n  - data.batch_size: ")


def test_an_unknown_source_option_lists_the_sources_options() -> None:
    with pytest.raises(DataConfigError) as err:
        PairsDataModule(source="reverse", source_options={"n_trian": 8})
    assert problems(err) == {
        "data.source_options": "unknown source_options n_trian; its options: n_train, n_val, n_test, min_length, "
        "max_length, alphabet (of source 'reverse') (did you mean 'n_train'?)"
    }


# -------------------------------------------------------------------------------------------- the tags


@pytest.mark.parametrize("tag", ["O", "B-PER", "I-PER", "E-LOC", "S-LOC", "B-geo-loc"])
def test_bio_iob1_and_bioes_tags_are_accepted(tag: str) -> None:
    assert tag_problem(tag) is None


@pytest.mark.parametrize(
    ("tag", "what"),
    [
        ("X-PER", "tag 'X-PER' is not a BIO tag"),
        ("I", "tag 'I' has no entity type"),
        ("B-", "tag 'B-' has no entity type"),
        ("U-PER", "tag 'U-PER' is not a BIO tag"),  # BILOU's are not read by the entity F1
        ("PER", "tag 'PER' is not a BIO tag"),
    ],
)
def test_a_tag_outside_bio_is_refused_at_its_line(tmp_path: Path, tag: str, what: str) -> None:
    path = tmp_path / "train.conll"
    path.write_text(f"EU B-ORG\nrejects {tag}\n\nGerman B-MISC\n")
    with pytest.raises(DataError) as err:
        ConllDataModule(path=str(path)).setup()
    assert str(err.value) == (
        f"{path}:2: {what}: BIO tags are O, or B- or I- followed by the entity type (B-PER, I-PER); IOB1, IOE and "
        "BIOES tags (E-PER, S-PER) are read too"
    )


@pytest.mark.parametrize(
    "tags",
    [
        ["B-ORG", "I-ORG", "O", "B-PER"],  # BIO (IOB2)
        ["I-ORG", "I-ORG", "O", "I-PER"],  # IOB1
        ["B-ORG", "E-ORG", "O", "S-PER"],  # BIOES
    ],
)
def test_bio_iob1_and_bioes_files_are_read(tmp_path: Path, tags: list[str]) -> None:
    path = tmp_path / "train.conll"
    path.write_text("".join(f"w{i} {tag}\n" for i, tag in enumerate(tags)))
    assert read_conll(path) == [([f"w{i}" for i in range(len(tags))], tags)]


def test_a_hugging_face_tag_outside_bio_is_refused_at_its_row(tmp_path: Path) -> None:
    path = tmp_path / "tags.jsonl"
    path.write_text('{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}\n{"tokens": ["hi"], "tags": ["I"]}\n')
    dm = HFDataModule(task="token_classification", train_path=str(path), tokenizer="char", cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="tags train row 1: tag 'I' has no entity type: BIO tags are O"):
        dm.setup()


# ----------------------------------------------------------------------------------- short and empty text


def test_a_text_shorter_than_one_window_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    path.write_text("ab\n")  # 3 characters and <eos>: 4 tokens
    with pytest.raises(DataError) as err:
        TextDataModule(path=str(path), block_size=32).setup()
    assert str(err.value) == (
        f"{path}: the training split has 4 tokens (char tokenizer, an <eos> after each text), fewer than one "
        "window of data.block_size=32: give more text, or set data.block_size to at most 4 (tokens of the other "
        "splits: val 0, test 0)"
    )
    dm = TextDataModule(path=str(path), block_size=4)  # exactly one window trains
    dm.setup()
    assert len(dm.datasets["train"]) == 1


def test_val_and_test_without_a_full_window_are_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train, val = tmp_path / "train.txt", tmp_path / "val.txt"
    train.write_text(TEXT)
    val.write_text("short\n")
    with caplog.at_level(logging.WARNING, logger="tfgraph.data.datamodules"):
        TextDataModule(train_path=str(train), val_path=str(val), block_size=32, test_fraction=0.0).setup()
    assert caplog.messages == [
        f"{val}: the val split has 7 tokens, under one window of data.block_size=32: it is evaluated on one "
        "shorter window"
    ]


@pytest.mark.parametrize("content", ["", "  \n\n"])
def test_an_empty_text_file_is_named(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        TextDataModule(path=str(path)).setup()
    assert str(err.value) == f"{path}: the file holds no text (it is empty or blank)"
    (tmp_path / "also_empty.txt").write_text("")
    with pytest.raises(DataError, match=f"{tmp_path}: none of its 2 files holds any text"):
        TextDataModule(path=str(tmp_path)).setup()


def test_held_out_splits_that_take_every_example_are_said() -> None:
    dm = PairsDataModule(path=str(FIXTURES / "pairs.tsv"), val_fraction=0.5, test_fraction=0.49, tokenizer="char")
    with pytest.raises(DataError, match=r"pairs.tsv: no training examples: all 20 examples are held out by "):
        dm.setup()


# ----------------------------------------------------------------------------- through tfgraph-train

QUICK = [
    "trainer.max_steps=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "sample.max_new_tokens=0",
    "~logger",
]
LM = ["task=causal_lm", "model=gpt2_tiny", "data=text"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([*LM, "data.path={tmp}/no_such.txt"], "data.path: {tmp}/no_such.txt: no such file"),
        ([*LM, "data.path=null"], "data.path: which file?"),
        ([*LM, "data.path={tmp}/book.txt", "data.batch_size=0"], "data.batch_size: expected a positive whole number"),
        (
            [*LM, "data.path={tmp}/book.txt", "data.block_size=1"],
            "data.block_size: expected a whole number of at least 2",
        ),
        (
            [*LM, "data.path={tmp}/book.txt", "data.tokenizer=bpee"],
            "data.tokenizer: unknown tokenizer 'bpee': did you mean 'bpe'?",
        ),
        ([*LM, "data.path={tmp}/tiny.txt", "data.block_size=32"], "{tmp}/tiny.txt: the training split has 4 tokens"),
        ([*LM, "data.path={tmp}/empty.txt"], "{tmp}/empty.txt: the file holds no text"),
        (
            [
                "task=seq2seq",
                "model=transformer_tiny",
                "data=pairs",
                "data.path={fixtures}/pairs.tsv",
                "data.val_path={tmp}/dev.tsv",
            ],
            "data.val_path: {tmp}/dev.tsv: no such file",
        ),
        (
            ["task=token_classification", "model=bert_tiny", "data=conll", "data.path={tmp}/no.conll"],
            "data.path: {tmp}/no.conll: no such file",
        ),
        (
            ["task=token_classification", "model=bert_tiny", "data=conll", "data.path={tmp}/xper.conll"],
            "{tmp}/xper.conll:2: tag 'X-PER' is not a BIO tag",
        ),
        (
            ["task=sequence_classification", "model=bert_tiny", "data=labeled", "data.path={tmp}/no.csv"],
            "data.path: {tmp}/no.csv: no such file",
        ),
        (
            ["task=causal_lm", "model=gpt2_tiny", "data=hf", "data.task=causal_lm", "data.train_path={tmp}/no.txt"],
            "data.train_path: {tmp}/no.txt: no such file",
        ),
    ],
)
def test_train_command_names_the_key_or_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, args: list[str], says: str
) -> None:
    from tfgraph.cli import train as train_cli

    (tmp_path / "book.txt").write_text(TEXT)
    (tmp_path / "tiny.txt").write_text("ab\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "xper.conll").write_text("EU B-ORG\nrejects X-PER\n\nGerman B-MISC\n")
    fill = {"tmp": str(tmp_path), "fixtures": str(FIXTURES)}
    argv = [arg.format(**fill) for arg in [*QUICK, *args, "hydra.run.dir={tmp}/run"]]
    monkeypatch.setattr(sys, "argv", ["tfgraph-train", *argv])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as stop:
        train_cli.main()
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert "Traceback" not in err and "error: " in err
    assert says.format(**fill) in err
