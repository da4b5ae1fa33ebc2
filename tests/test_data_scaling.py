"""experiments/benchmarks/data_scaling.py's steps at a tiny size, so that the benchmark cannot rot unnoticed."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"


@pytest.fixture(scope="module")
def scaling():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("data_scaling")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_every_step_runs_in_process_and_makes_a_table(scaling, tmp_path):
    corpus = tmp_path / "corpus.txt"
    built = scaling.build_corpus(corpus, 100_000)
    assert built["bytes"] == 100_000 == corpus.stat().st_size
    cache, tokenizer = tmp_path / "a", tmp_path / "tokenizer.json"
    cache.mkdir()
    row = {"mb": 0.1, "corpus": built}
    for kind in ("prepare", "reopen", "encode", "baseline"):
        where = cache if kind in ("prepare", "reopen") else tmp_path / kind
        where.mkdir(exist_ok=True)
        row[kind] = scaling.step(kind, str(corpus), str(where), str(tokenizer))
        assert row[kind]["seconds"] > 0 and row[kind]["tokens"] > 0, kind
    assert row["reopen"]["tokens"] == row["prepare"]["tokens"] == row["encode"]["tokens"]

    row["train"] = scaling.train_step(str(corpus), str(cache), steps=2)
    train = row["train"]
    assert train["steps"] == 2 and train["read"] == 2 * 8
    assert 0 <= train["lowest"] <= train["highest"] < train["windows"]
    assert train["peak_rss_mb"] >= train["rss_start_mb"] > 0
    assert len(list((cache / "prepared").glob("*/meta.json"))) == 1  # trained on the prepared data, not a copy

    storage = scaling.storage_step(str(cache), reads=64)
    assert set(storage["stores"]) == {"numpy memmap", "datasets Arrow"}
    for kept in storage["stores"].values():
        assert kept["bytes"] >= 2 * storage["rows"] * scaling.WINDOW and kept["one_per_s"] > 0
    row["prepared_bytes"] = 1
    table = scaling.table({"environment": scaling.environment(), "rows": [row], "storage": {"mb": 0.1, **storage}})
    assert "| 0.1 MB |" in table and "| numpy memmap |" in table and "| datasets Arrow |" in table


@pytest.mark.slow
def test_a_step_in_a_process_of_its_own(scaling, tmp_path):
    corpus, cache = tmp_path / "corpus.txt", tmp_path / "a"
    scaling.build_corpus(corpus, 20_000)
    cache.mkdir()
    measured = scaling.measure("prepare", corpus, cache, tmp_path / "tokenizer.json")
    assert measured["tokens"] > 0 and measured["peak_rss_mb"] > 0
    assert (tmp_path / "tokenizer.json").is_file()
