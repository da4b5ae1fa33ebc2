"""task.metrics is checked with the rest of the config, before any data is read."""

from __future__ import annotations

from pathlib import Path

import pytest

import tfgraph
from tfgraph.run_checks import check_config


def test_an_unknown_metric_is_found_before_any_data_with_the_known_ones(tmp_path: Path) -> None:
    cfg = tfgraph.compose(
        [
            "task=seq2seq",
            "model=transformer_tiny",
            "data=pairs",
            f"data.path={tmp_path / 'no_such_file.tsv'}",  # reading it would be a DataError
            "task.metrics=[bleu,blue]",
            "task.num_beams=0",
        ]
    )
    with pytest.raises(tfgraph.ConfigError) as caught:
        check_config(cfg)
    problems = dict(caught.value.problems)
    assert problems["task.metrics"].startswith("unknown metric 'blue' (did you mean 'bleu'?); seq2seq's metrics are ")
    assert "bleu, chrf, exact_match, rouge1, rouge2, rougeL, rougeLsum" in problems["task.metrics"]
    assert "task.num_beams" in problems  # reported together


def test_known_metrics_pass() -> None:
    check_config(tfgraph.compose(["task=seq2seq", "model=transformer_tiny", "task.metrics=[rouge1,chrf]"]))
