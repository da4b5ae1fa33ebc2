"""A run's console: no Lightning adverts or known deprecation warnings, one model summary with tfgraph's counts."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
from pytorch_lightning.callbacks import ModelSummary
from pytorch_lightning.utilities import _pytree

import tfgraph
from tests.conftest import tiny_text_run
from tfgraph.tasks.summary import RichModelSummary
from tfgraph.trainer import build_trainer, quiet_lightning

NOISE = (
    "Tip:",
    "litlogger",
    "Trainer already configured with model summary callbacks",
    "LeafSpec",
    "Total FLOPs",
    "You have overridden `on_before_batch_transfer`",
)


def test_lightning_s_pytree_warns_of_leafspec_until_quietened() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _pytree._tree_flatten(1)  # what Lightning's loops call: a LeafSpec built
        assert any("LeafSpec" in str(w.message) for w in caught)  # the warning the filter is there for
        caught.clear()
        quiet_lightning()
        _pytree._tree_flatten(1)
        warnings.warn("a warning of the run's own", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning of the run's own"]  # only the known one is dropped


def test_a_run_shows_one_summary_with_tfgraph_s_counts_and_no_lightning_noise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tfgraph.compose([*tiny_text_run(tmp_path), f"paths.output_dir={tmp_path / 'run'}", "trainer.max_steps=2"])
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tfgraph.train(cfg)
    out = capsys.readouterr()
    shown = "\n".join([out.out, out.err, *(r.getMessage() for r in caplog.records), *(str(w.message) for w in caught)])
    assert not [noise for noise in NOISE if noise in shown], shown
    assert "Trainable params: 67,840" in shown and "Total params: 67,840" in shown
    assert "Forward FLOPs per token: 166,528 (at sequence length 256)" in shown  # as tfgraph-show counts them
    assert shown.count("Total params") == 1  # one summary
    row = next(line for line in out.out.splitlines() if " model.decoder " in line)
    assert "163 K" in row  # the decoder's FLOPs per token, not Lightning's 0


def test_the_trainer_has_one_summary_callback(tmp_path: Path) -> None:
    def summaries(*overrides: str) -> list[type]:
        cfg = tfgraph.compose(["trainer.accelerator=cpu", f"paths.output_dir={tmp_path}", *overrides])
        return [type(c) for c in build_trainer(cfg).callbacks if isinstance(c, ModelSummary)]

    assert summaries() == [RichModelSummary]  # callbacks=default's
    (plain,) = summaries("callbacks=none")  # Lightning would add its own, counting no FLOPs
    assert plain.__module__ == "tfgraph.tasks.summary"
    assert summaries("trainer.enable_model_summary=false") == []
