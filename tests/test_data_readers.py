"""Readers of the user's files: what each reads, and the file and line each names for a malformed one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tfgraph.data import DataError
from tfgraph.data.readers import expand_paths, read_conll, read_hf, read_labeled, read_pairs, read_text

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def raises_at(path: Path, line: int | None, match: str = ""):  # noqa: ANN201 - a pytest context manager
    """Expect a DataError that starts with ``path:line:`` and mentions ``match``."""
    where = f"{path}:{line}: " if line is not None else f"{path}"
    return pytest.raises(DataError, match=re.escape(where) + ".*" + re.escape(match))


# text


def test_read_text_file_folder_and_glob() -> None:
    alpha, beta = FIXTURES / "corpus" / "alpha.txt", FIXTURES / "corpus" / "sub" / "beta.txt"
    assert read_text(alpha) == [alpha.read_text()]
    assert read_text(FIXTURES / "corpus") == [alpha.read_text(), beta.read_text()]  # hidden files left out
    assert read_text(str(FIXTURES / "corpus" / "**" / "*.txt")) == [alpha.read_text(), beta.read_text()]
    assert expand_paths(str(FIXTURES / "corpus" / "*.txt")) == [alpha]


def test_read_text_errors() -> None:
    with raises_at(FIXTURES / "bad_utf8.txt", 3, "not valid UTF-8"):
        read_text(FIXTURES / "bad_utf8.txt")
    with pytest.raises(DataError, match="no such file or folder"):
        read_text(FIXTURES / "missing.txt")
    with pytest.raises(DataError, match="no file matches"):
        read_text(str(FIXTURES / "corpus" / "*.md"))


def test_read_text_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no file"):
        read_text(tmp_path)


# pairs


def test_read_pairs_jsonl_and_tsv_agree() -> None:
    jsonl = read_pairs(FIXTURES / "pairs.jsonl")
    assert jsonl == read_pairs(FIXTURES / "pairs.tsv")
    assert len(jsonl) == 20
    assert jsonl[1] == ("green cat tree", "verde gato árbol")


def test_read_pairs_custom_keys_and_format() -> None:
    pairs = read_pairs(FIXTURES / "pairs_custom_keys.jsonl", source_key="en", target_key="es")
    assert pairs[1] == ("green cat tree", "verde gato árbol")
    with raises_at(FIXTURES / "pairs_custom_keys.jsonl", 1, "field 'source' is missing (fields: 'en', 'es')"):
        read_pairs(FIXTURES / "pairs_custom_keys.jsonl")


def test_read_pairs_malformed_lines() -> None:
    with raises_at(FIXTURES / "pairs_bad.jsonl", 3, "field 'target' is missing"):
        read_pairs(FIXTURES / "pairs_bad.jsonl")
    with raises_at(FIXTURES / "pairs_bad.tsv", 2, "expected 2 tab-separated columns (source, target), found 3"):
        read_pairs(FIXTURES / "pairs_bad.tsv")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"source": "a", "target": ', "not JSON"),
        ('["a", "b"]', "got a JSON list"),
        ('{"source": "a", "target": null}', "field 'target' is a NoneType"),
    ],
)
def test_read_pairs_bad_json(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"source": "x", "target": "y"}\n' + line + "\n")
    with raises_at(path, 2, message):
        read_pairs(path)


def test_read_pairs_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "pairs.dat"
    path.write_text("a\tb\n")
    with pytest.raises(DataError, match="cannot tell the format"):
        read_pairs(path)
    assert read_pairs(path, format="tsv") == [("a", "b")]


# CoNLL


def test_read_conll_sentences_skip_docstart() -> None:
    sentences = read_conll(FIXTURES / "tags.conll")
    assert len(sentences) == 10
    assert sentences[0] == (["EU", "rejects", "German", "call", "."], ["B-ORG", "O", "B-MISC", "O", "O"])
    assert sentences[-1][0] == ["Maria", "works", "at", "Siemens"]  # no blank line at the end of the file


def test_read_conll_columns_and_tab_only_separator_lines() -> None:
    chunks = read_conll(FIXTURES / "tags.conll", tag_column=2)
    assert chunks[0][1] == ["B-NP", "B-VP", "B-NP", "I-NP", "O"]
    sentences = read_conll(FIXTURES / "tags_tab.tsv", separator="\t")  # WNUT's tab-only line ends a sentence
    assert sentences == [(["@user", "loves", "New", "York"], ["O", "O", "B-geo-loc", "I-geo-loc"]), (["hi"], ["O"])]


def test_read_conll_malformed_line() -> None:
    with raises_at(FIXTURES / "tags_bad.conll", 4, "found 1 column(s)"):
        read_conll(FIXTURES / "tags_bad.conll")


def test_read_conll_comments(tmp_path: Path) -> None:
    path = tmp_path / "u.conllu"
    path.write_text("# sent_id = 1\nHello O\n")
    assert read_conll(path, comment_prefix="#") == [(["Hello"], ["O"])]
    with raises_at(path, 1, "found 4 column(s)"):
        read_conll(path, tag_column=4)


# labelled texts


def test_read_labeled_csv_and_jsonl() -> None:
    rows = read_labeled(FIXTURES / "labeled.csv")
    assert len(rows) == 20
    assert rows[0] == ("a wonderful film, truly moving", "pos")
    assert rows[16] == ('"quoted, with a comma" and more', "pos")  # CSV quoting
    numeric = read_labeled(FIXTURES / "labeled.jsonl")
    assert numeric[0] == ("a wonderful film, truly moving", "1")  # numbers become label strings


def test_read_labeled_malformed() -> None:
    with raises_at(FIXTURES / "labeled_bad.csv", 3, "expected 2 fields as in the header, found 4"):
        read_labeled(FIXTURES / "labeled_bad.csv")
    with raises_at(FIXTURES / "labeled_bad_label.csv", 3, "empty label"):
        read_labeled(FIXTURES / "labeled_bad_label.csv")
    with raises_at(FIXTURES / "labeled_bad.jsonl", 2, "not JSON"):
        read_labeled(FIXTURES / "labeled_bad.jsonl")
    with raises_at(FIXTURES / "labeled_no_header.csv", 1, "lacks the column(s) 'text', 'label'"):
        read_labeled(FIXTURES / "labeled_no_header.csv")
    assert read_labeled(FIXTURES / "labeled_no_header.csv", text_key="sentence", label_key="polarity") == [
        ("fine movie", "pos")
    ]


# Hugging Face datasets, local only


def test_read_hf_local_files_and_saved_dataset(tmp_path: Path) -> None:
    hf = read_hf(data_files={"train": str(FIXTURES / "labeled.jsonl")}, cache_dir=str(tmp_path / "cache"))
    assert hf["train"].num_rows == 20
    assert hf["train"][0] == {"text": "a wonderful film, truly moving", "label": 1}
    hf.save_to_disk(str(tmp_path / "saved"))
    again = read_hf(tmp_path / "saved")
    assert again["train"][0] == hf["train"][0]


def test_read_hf_errors(tmp_path: Path) -> None:
    with raises_at(FIXTURES / "labeled_bad.jsonl", 2, "not JSON"):
        read_hf(data_files={"train": str(FIXTURES / "labeled_bad.jsonl")})
    with pytest.raises(DataError, match="never downloads from the hub"):
        read_hf("imdb")  # a hub name is not a local folder
    with pytest.raises(DataError, match="either `path`"):
        read_hf()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps([1, 2]) + "\n")
    with raises_at(bad, 1, "expected a JSON object, got a JSON list"):
        read_hf(data_files={"train": str(bad)})
