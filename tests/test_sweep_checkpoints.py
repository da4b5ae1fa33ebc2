"""Sweeps keep of each job's checkpoints what sweep_checkpoints asks for (best by default, none with debug=limit)
and summary.md says so."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus

import tfgraph
from tests.test_sweeps import fake_job, job_config, train_multirun
from tfgraph.cli.sweep import SweepSummary
from tfgraph.run_checks import check_config
from tfgraph.sweeps import prune_checkpoints, write_summary


def checkpoints(run_dir: Path, *names: str) -> None:
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    for name in names:
        (run_dir / "checkpoints" / name).write_bytes(b"x" * 1000)


def kept(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.rglob("*.ckpt"))


@pytest.mark.parametrize(
    ("keep", "left"),
    [
        ("best", ["step000020.ckpt"]),
        ("last", ["last.ckpt"]),
        ("all", ["last.ckpt", "step000020.ckpt"]),
        ("none", []),
    ],
)
def test_a_finished_job_keeps_what_sweep_checkpoints_asks_for(tmp_path: Path, keep: str, left: list[str]) -> None:
    checkpoints(tmp_path, "last.ckpt", "step000020.ckpt")
    (tmp_path / "tokenizer.json").write_text("{}")
    removed = prune_checkpoints(tmp_path, keep)
    assert kept(tmp_path) == left
    assert sorted(p.name for p in removed) == sorted({"last.ckpt", "step000020.ckpt"} - set(left))
    assert (tmp_path / "tokenizer.json").is_file()  # only checkpoints go


def test_best_keeps_last_ckpt_where_no_best_was_saved(tmp_path: Path) -> None:
    checkpoints(tmp_path, "last.ckpt")
    assert prune_checkpoints(tmp_path, "best") == [] and kept(tmp_path) == ["last.ckpt"]


def test_the_callback_prunes_each_job_and_the_summary_says_what_was_kept(tmp_path: Path) -> None:
    callback = SweepSummary()
    callback.on_multirun_start(job_config(tmp_path / "0", 0))
    for num in range(2):
        job_dir = fake_job(tmp_path, num, [f"model.n_layers={num + 1}"])
        checkpoints(job_dir, "last.ckpt", f"step00000{num}.ckpt")
        config = job_config(job_dir, num)
        config.sweep_checkpoints = "best"
        callback.on_job_start(config)
        callback.on_job_end(config, JobReturn(overrides=[], status=JobStatus.COMPLETED, _return_value=1.0))
    assert [kept(tmp_path / str(num)) for num in range(2)] == [["step000000.ckpt"], ["step000001.ckpt"]]
    md = (tmp_path / "summary.md").read_text()
    assert (
        "Checkpoints (sweep_checkpoints=best; or last, all, none): each job keeps its best by optimized_metric, "
        "or last.ckpt where callbacks.model_checkpoint saved none; 2 files, 0.0 MB in the jobs' dirs." in md
    )
    _, md_path, _ = write_summary(tmp_path)  # a sweep whose option is not known: the files only
    assert "Checkpoints: 2 files, 0.0 MB in the jobs' dirs." in md_path.read_text()


def test_an_unknown_value_is_a_config_error_listing_the_options(tmp_path: Path) -> None:
    cfg = tfgraph.compose(["sweep_checkpoints=bset", f"paths.output_dir={tmp_path}"])
    with pytest.raises(
        tfgraph.ConfigError, match=r"sweep_checkpoints: expected one of best, last, all, none, got 'bset'"
    ):
        check_config(cfg)
    assert tfgraph.compose(["debug=limit"]).sweep_checkpoints == "none"
    assert tfgraph.compose().sweep_checkpoints == "best"


def sweep(tmp_path: Path, *args: str) -> Path:
    tmp_path.mkdir()
    train_multirun(
        tmp_path,
        "model=gpt2_tiny",
        "model.n_layers=1",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "test=false",
        "~logger",
        "model/norm=layernorm,rmsnorm",
        *args,
    )
    return tmp_path / "sweep"


@pytest.mark.slow
def test_a_sweep_keeps_the_best_checkpoint_of_each_job_or_none(tmp_path: Path) -> None:
    swept = sweep(tmp_path / "best")
    for num in range(2):  # the best by val/loss of the validations at steps 2 and 4, not last.ckpt
        assert kept(swept / str(num)) in (["step000002.ckpt"], ["step000004.ckpt"])
    assert "(sweep_checkpoints=best; or last, all, none): each job keeps its best" in (swept / "summary.md").read_text()

    swept = sweep(tmp_path / "none", "sweep_checkpoints=none")
    assert [kept(swept / str(num)) for num in range(2)] == [[], []]
    assert (swept / "0" / "tokenizer.json").is_file() and (swept / "0" / "metrics.json").is_file()
    assert (
        "(sweep_checkpoints=none; or best, last, all): each job keeps no checkpoint; 0 files, 0.0 MB"
        in (swept / "summary.md").read_text()
    )
