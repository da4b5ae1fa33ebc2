"""A run's tokenizer.json is a `tokenizers` file with the same ids; load_tokenizer reads it and the files before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer as LibTokenizer

import tfgraph
from tests.conftest import tiny_text_run
from tfgraph.data import DataError, Tokenizer, build_tokenizer, load_tokenizer
from tfgraph.data.tokenizers import KINDS
from tfgraph.tasks import load_checkpoint

TRAIN = ["The quick brown fox jumps over the lazy dog.\nHello, world! Ça va? A naïve café."] * 20
SIZES = {"bpe": 300, "wordpiece": 150, "unigram": 120}
TEXTS = ["the lazy fox", "Ça va?\n  Hello,\tworld!", "zzz qqq €😀", "", " leading and trailing  "]


@pytest.fixture(scope="module", params=KINDS)
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    return build_tokenizer(request.param, TRAIN, vocab_size=SIZES.get(request.param))


def test_the_saved_file_is_a_tokenizers_file_with_the_same_ids(tokenizer: Tokenizer, tmp_path: Path) -> None:
    tokenizer.save(tmp_path / "tokenizer.json")
    hf = LibTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.get_vocab_size(with_added_tokens=True) == tokenizer.vocab_size
    assert [hf.token_to_id(t) for t in ("<pad>", "<unk>", "<bos>", "<eos>", "<mask>")] == [0, 1, 2, 3, 4]
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert hf.encode(text, add_special_tokens=False).ids == ids, text
        framed = [tokenizer.bos_id, *ids, tokenizer.eos_id, tokenizer.pad_id]
        assert hf.decode(framed, skip_special_tokens=True) == tokenizer.decode(framed)
        assert hf.decode(ids) == tokenizer.decode(ids)
        if tokenizer.kind in ("byte", "char") and tokenizer.unk_id not in ids:
            assert hf.decode(ids) == text
    assert json.loads((tmp_path / "tokenizer_info.json").read_text()) == {"kind": tokenizer.kind}


def test_load_tokenizer_reads_the_saved_files_back(tokenizer: Tokenizer, tmp_path: Path) -> None:
    tokenizer.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert type(again) is type(tokenizer) and again.kind == tokenizer.kind
    assert again.vocab_size == tokenizer.vocab_size
    assert [again.encode(t) for t in TEXTS] == [tokenizer.encode(t) for t in TEXTS]
    assert [again.decode(tokenizer.encode(t)) for t in TEXTS] == [tokenizer.decode(tokenizer.encode(t)) for t in TEXTS]


def test_load_tokenizer_reads_the_files_written_before(tokenizer: Tokenizer, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(tokenizer.to_json())  # what Tokenizer.save wrote before: no info file
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.kind == tokenizer.kind and [again.encode(t) for t in TEXTS] == [tokenizer.encode(t) for t in TEXTS]


def test_an_old_char_file_as_it_was_written(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text('{"kind": "char", "chars": [" ", "a", "b"]}')
    assert load_tokenizer(tmp_path / "tokenizer.json").encode("ab ba c") == [6, 7, 5, 7, 6, 5, 1]
    (tmp_path / "tokenizer.json").write_text('{"kind": "byte"}')
    assert load_tokenizer(tmp_path / "tokenizer.json").encode("é") == [200, 174]


def test_the_file_s_errors_say_what_is_wrong(tmp_path: Path) -> None:
    build_tokenizer("char", ["abc"]).save(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_info.json").unlink()
    with pytest.raises(DataError, match="no tokenizer_info.json beside it to say which tfgraph tokenizer kind"):
        load_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_info.json").write_text('{"kind": "chars"}')
    with pytest.raises(DataError, match="unknown tokenizer kind 'chars'.*did you mean 'char'"):
        load_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_info.json").write_text("[]")
    with pytest.raises(DataError, match=r'tokenizer_info.json: expected \{"kind": <one of byte, char'):
        load_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_info.json").write_text('{"kind": "char"}')
    (tmp_path / "tokenizer.json").write_text('{"model": 1}')
    with pytest.raises(DataError, match="tokenizer.json: not a tokenizers-library file"):
        load_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text("not json")
    with pytest.raises(DataError, match="tokenizer.json: not a tokenizer JSON"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_load_tokenizer_is_exported() -> None:
    assert tfgraph.load_tokenizer is load_tokenizer
    assert "load_tokenizer" in dir(tfgraph)


def test_a_run_s_tokenizer_json_is_its_checkpoint_s_tokenizer(tmp_path: Path) -> None:
    cfg = tfgraph.compose([*tiny_text_run(tmp_path), f"paths.output_dir={tmp_path / 'run'}", "trainer.max_steps=1"])
    tfgraph.train(cfg)
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    stored = Tokenizer.from_json(checkpoint["hyper_parameters"]["tokenizer"])  # as a checkpoint stores it
    hf = LibTokenizer.from_file(str(tmp_path / "run" / "tokenizer.json"))
    text = "to be or not to be, that is the question? 1"
    assert hf.encode(text, add_special_tokens=False).ids == stored.encode(text)
    assert load_tokenizer(tmp_path / "run" / "tokenizer.json").to_json() == stored.to_json()


def test_the_library_reads_a_special_token_spelt_out_in_a_text_as_the_readme_says(tmp_path: Path) -> None:
    char = build_tokenizer("char", ["<pad> and <eos>"])
    char.save(tmp_path / "tokenizer.json")
    hf = LibTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.encode("<eos>", add_special_tokens=False).ids == [3]  # as every tokenizer of that library
    assert char.encode("<eos>") == [char.encode(c)[0] for c in "<eos>"]  # tfgraph's: its five characters
