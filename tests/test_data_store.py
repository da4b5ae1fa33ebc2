"""Prepared data: made once per key, reopened without reading the data, rebuilt when a file or setting changes,
never trusted half-made; streamed text pieces cut as split_text cuts; tfgraph-prepare's report."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import numpy as np
import pytest

import tfgraph
from tfgraph.cli.prepare import prepare, report
from tfgraph.data import DataConfigError, LabeledDataModule, PairsDataModule, TextDataModule, readers, store
from tfgraph.data.examples import StreamedExamples, StreamedSplit, TextExamples, hold_out, split_text
from tfgraph.data.readers import read_text, text_pieces

FIXTURES = Path(__file__).parent / "fixtures" / "data"
TEXT = "".join(f"line {i} of the corpus, with some words in it.\n" for i in range(200))


def text_module(path: Path, cache: Path, **options: object) -> TextDataModule:
    return TextDataModule(**{"path": str(path), "block_size": 16, "batch_size": 4, "cache_dir": str(cache), **options})


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_a_second_setup_opens_the_prepared_data_without_reading_it(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = text_module(corpus, tmp_path / "cache")
    first.setup()
    assert first.prepared_dir is not None and first.prepared_dir.parent == tmp_path / "cache" / "prepared"
    batch = next(iter(first.train_dataloader()))

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was read again")

    monkeypatch.setattr(readers, "text_pieces", no_reading)
    second = text_module(corpus, tmp_path / "cache")
    second.setup()
    assert second.prepared_dir == first.prepared_dir
    assert second.tokenizer.to_json() == first.tokenizer.to_json()
    assert (next(iter(second.train_dataloader()))["input_ids"] == batch["input_ids"]).all()
    assert list(second.splits["test"]) == list(first.splits["test"]) and second.splits["test"][0].startswith("line")
    assert isinstance(second.datasets["train"].stream, np.ndarray)  # a memory map, not a tensor in memory


def test_a_changed_file_or_setting_prepares_again(corpus: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    base = text_module(corpus, cache)
    base.setup()
    other_setting = text_module(corpus, cache, val_fraction=0.2)
    other_setting.setup()
    same_but_batch = text_module(corpus, cache, batch_size=8)  # how it is batched is not part of the key
    same_but_batch.setup()
    corpus.write_text(TEXT + "one more line\n", encoding="utf-8")
    changed = text_module(corpus, cache)
    changed.setup()
    assert same_but_batch.prepared_dir == base.prepared_dir
    assert len({base.prepared_dir, other_setting.prepared_dir, changed.prepared_dir}) == 3
    assert changed.splits["test"][0].endswith("one more line\n")


def test_a_changed_tokenizer_info_prepares_again(corpus: Path, tmp_path: Path) -> None:
    """The prepared data of ``tokenizer_path`` depends on the ``tokenizer_info.json`` beside it too (the kind the
    tokenizer is read as): changing it gives a new key, leaving it alone the same one."""
    run = tmp_path / "run"
    run.mkdir()
    trained = text_module(corpus, tmp_path / "first")
    trained.setup()
    trained.tokenizer.save(run / "tokenizer.json")
    info = run / "tokenizer_info.json"
    assert info.is_file()
    cache = tmp_path / "cache"
    base = text_module(corpus, cache, tokenizer_path=str(run / "tokenizer.json"))
    base.setup()
    again = text_module(corpus, cache, tokenizer_path=str(run / "tokenizer.json"))
    again.setup()
    info.write_text(json.dumps({"kind": trained.tokenizer.kind, "written_by": "another run"}), encoding="utf-8")
    changed = text_module(corpus, cache, tokenizer_path=str(run / "tokenizer.json"))
    changed.setup()
    assert again.prepared_dir == base.prepared_dir
    assert changed.prepared_dir != base.prepared_dir
    assert changed.tokenizer.to_json() == base.tokenizer.to_json()


def test_a_killed_preparation_leaves_nothing_trusted(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(TextExamples, "write", killed)
        with pytest.raises(KeyboardInterrupt):
            text_module(corpus, cache).setup()
    assert list((cache / "prepared").glob("*")) == [] or all(
        p.suffix == ".lock" for p in (cache / "prepared").iterdir()
    )
    name = text_module(corpus, tmp_path / "elsewhere").prepare_and_open()[0].name  # the folder's name here
    left = cache / "prepared" / f"{name}.partial-x"  # what a process killed by SIGKILL leaves: never opened
    left.mkdir()
    (left / store.META).write_text("{}")
    dm = text_module(corpus, cache)
    dm.setup()
    assert dm.prepared_dir.name == name and (dm.prepared_dir / store.META).is_file()
    assert not left.exists()  # removed under the lock by the preparation of its key


def test_a_folder_of_an_older_format_is_prepared_again(corpus: Path, tmp_path: Path) -> None:
    dm = text_module(corpus, tmp_path / "cache")
    dm.setup()
    meta = json.loads((dm.prepared_dir / store.META).read_text())
    (dm.prepared_dir / store.META).write_text(json.dumps({**meta, "format": store.FORMAT - 1}))
    (dm.prepared_dir / "train.ids.bin").write_bytes(b"")  # would be an empty training split if it were trusted
    again = text_module(corpus, tmp_path / "cache")
    again.setup()
    assert json.loads((again.prepared_dir / store.META).read_text())["format"] == store.FORMAT
    assert len(again.datasets["train"]) == len(dm.datasets["train"]) > 0


def test_a_cache_dir_that_cannot_be_written_names_the_key(corpus: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(DataConfigError, match=r"data\.cache_dir: .*a_file/prepared: cannot write the prepared data"):
        text_module(corpus, blocker).setup()


def test_two_preparations_of_one_key_at_once_make_one_folder(tmp_path: Path) -> None:
    made: list[Path] = []
    errors: list[BaseException] = []

    def prepare_pairs() -> None:
        try:
            dm = PairsDataModule(path=str(FIXTURES / "pairs.jsonl"), tokenizer="char", cache_dir=str(tmp_path))
            dm.setup()
            made.append(dm.prepared_dir)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=prepare_pairs) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(made)) == 1
    assert [p.name for p in (tmp_path / "prepared").iterdir() if not p.name.endswith(".lock")] == [made[0].name]


def test_variable_length_examples_are_flat_ids_and_offsets(tmp_path: Path) -> None:
    dm = LabeledDataModule(path=str(FIXTURES / "labeled.csv"), tokenizer="char", cache_dir=str(tmp_path))
    dm.setup()
    ids = dm.datasets["train"].columns[0]
    assert isinstance(ids, store.Ragged) and ids.values.dtype == np.uint16 and ids.offsets[0] == 0
    assert len(ids.offsets) == len(dm.splits["train"]) + 1
    text, label = dm.splits["train"][0]
    row, label_id = dm.datasets["train"][0]
    assert dm.tokenizer.decode(row) == text[: len(row) - 1] and dm.label_names[label_id] == label


def test_the_tokenizer_sample_trains_on_the_first_characters_only(corpus: Path, tmp_path: Path) -> None:
    corpus.write_text("abc\n" * 50 + "xyz\n" * 50, encoding="utf-8")
    dm = text_module(corpus, tmp_path, tokenizer_sample=40)
    dm.setup()
    assert dm.tokenizer.chars == ["\n", "a", "b", "c"]


def test_text_pieces_cut_the_files_as_split_text(tmp_path: Path) -> None:
    rng = random.Random(0)
    for trial in range(200):
        lines = [rng.choice(["", " ", "héllo wörld", "ab", "x" * rng.randint(1, 30)]) for _ in range(rng.randint(1, 9))]
        ends = [rng.choice(["\n", "\r\n"]) for _ in lines]
        text = "".join(line + end for line, end in zip(lines, ends, strict=True)) + rng.choice(["", "tail", " "])
        path = tmp_path / f"t{trial}.txt"
        path.write_bytes((b"\xef\xbb\xbf" if trial % 5 == 0 else b"") + text.encode())
        fractions = rng.choice([(0.1, 0.1), (0.2, 0.3), (0.5, 0.0), (0.0, 0.0)])
        try:
            texts = read_text(path)
        except tfgraph.data.DataError as err:
            with pytest.raises(tfgraph.data.DataError, match="holds no text"):
                text_pieces(path, *fractions)
            assert "holds no text" in str(err)
            continue
        pieces = text_pieces(path, *fractions)
        assert tuple([p.text for p in part] for part in pieces) == split_text(texts, *fractions)
        assert [p.text for p in text_pieces(path, whole=True)[0]] == texts


def test_tfgraph_prepare_reports_the_folder_tokens_and_size(tmp_path: Path) -> None:
    cfg = tfgraph.compose(
        [f"data.path={FIXTURES / 'corpus'}", "data.tokenizer=char", f"data.cache_dir={tmp_path}", "data.block_size=8"],
        config_name="prepare",
    )
    result = prepare(cfg)
    assert Path(result["folder"]).parent == tmp_path / "prepared" and result["bytes"] > 0
    lines = report(result).splitlines()
    assert lines[0] == f"prepared: {result['folder']}"
    assert lines[1].startswith(f"tokens: {sum(result['tokens'].values()):,} (train ")
    assert lines[-1].startswith("size: ") and lines[-1].endswith(" MiB")


def test_streamed_examples_are_held_out_as_a_list_of_them_is(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"s{i}\tt{i}\n" for i in range(50)), encoding="utf-8")
    streamed = StreamedExamples(lambda: readers.iter_pairs(path))
    assert len(streamed) == 50 and list(streamed) == readers.read_pairs(path)
    for fractions in ((0.1, 0.1), (0.3, 0.0), (0.0, 0.0)):
        parts = hold_out(streamed, *fractions, seed=3)
        assert all(isinstance(part, StreamedSplit) for part in parts)
        assert [list(part) for part in parts] == [list(part) for part in hold_out(list(streamed), *fractions, seed=3)]
        assert [len(part) for part in parts] == [len(list(part)) for part in parts]
