"""tfgraph-eval's metrics.json is written whole or not at all: a temporary file beside it, then one rename."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import tfgraph
from tests.conftest import tiny_text_run
from tfgraph.evaluate import evaluate


def test_eval_writes_metrics_json_by_one_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tfgraph.train(
        tfgraph.compose([*tiny_text_run(tmp_path), f"paths.output_dir={tmp_path / 'run'}", "trainer.max_steps=1"])
    )
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"val/loss": 99.0}\n')  # an earlier evaluation's
    cfg = tfgraph.compose(
        [
            f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
            "split=val",
            f"+data.cache_dir={tmp_path / 'cache'}",
            f"paths.output_dir={out}",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
        ],
        config_name="eval",
    )
    renames: list[tuple[Path, Path, dict]] = []
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        renames.append((Path(src), Path(dst), json.loads((out / "metrics.json").read_text())))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    metrics = evaluate(cfg)
    (src, dst, before) = next(r for r in renames if r[1].name == "metrics.json")
    assert dst == out / "metrics.json" and src.parent == out and src.name != dst.name
    assert before == {"val/loss": 99.0}  # until the rename, the earlier file is whole
    assert json.loads(dst.read_text()) == pytest.approx(metrics) and "val/loss" in metrics
    assert not src.exists()
