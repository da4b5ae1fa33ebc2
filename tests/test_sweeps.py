"""Sweeps: the summary read from each job's files, failed jobs that do not stop a sweep, the parameter budget, a
diverging loss, the Optuna and launcher presets, and real multiruns through the command (marked slow)."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf

import tfgraph
from tfgraph.cli import sweep as sweep_cli
from tfgraph.cli.sweep import (
    FailedJob,
    SweepSummary,
    objective_mode,
    register_resolvers,
    summarize_stopped_sweep,
    sweep_job,
)
from tfgraph.config import conf_dir
from tfgraph.sweeps import NO_RESULT, declared_sweeps, error_line, read_jobs, write_summary
from tfgraph.sweeps import main as summarize_main
from tfgraph.train import TrainingDiverged, model_info, train

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
QUIET = [
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "sample.max_new_tokens=0",
]


def text_file(path: Path, lines: int = 200) -> Path:
    rng = random.Random(0)
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(lines)) + "\n")
    return path


# --------------------------------------------------------------------------------------------- the summary


def fake_job(sweep: Path, num: int, overrides: list[str], **files: dict[str, Any]) -> Path:
    """A job dir as a sweep leaves it: .hydra/overrides.yaml and the JSON files given (job, run_info, metrics)."""
    job_dir = sweep / str(num)
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    for name, content in files.items():
        (job_dir / f"{name}.json").write_text(json.dumps(content))
    return job_dir


def test_the_summary_lists_each_job_from_its_files_and_a_job_without_a_result_as_failed(tmp_path: Path) -> None:
    fixed = "trainer.max_steps=20"
    fake_job(
        tmp_path,
        0,
        ["model/norm=layernorm", "model.n_heads=4", fixed],
        job={"num": 0, "status": "ok", "error": "", "wall_s": 12.34},
        run_info={"params": 1000, "flops_per_token": 2000.0},
        metrics={"train/loss": 2.0, "val/loss": 1.5, "test/loss": 1.6},
    )
    fake_job(
        tmp_path,
        1,
        ["model/norm=rmsnorm", "model.n_heads=4", fixed],
        job={"num": 1, "status": "ok", "error": "", "wall_s": 3.0},
        run_info={"params": 990, "flops_per_token": 1990.0},
        metrics={"val/loss": 1.25, "val/accuracy": 0.5},
    )
    fake_job(
        tmp_path,
        2,
        ["model/norm=layernorm", "model.n_heads=5", fixed],
        job={"num": 2, "status": "failed", "error": "ConfigError: model.n_heads: 64 is not divisible by 5"},
    )
    fake_job(tmp_path, 3, ["model/norm=rmsnorm", "model.n_heads=5", fixed])  # killed: no job.json
    (tmp_path / ".submitit" / "x").mkdir(parents=True)  # not a job

    csv_path, md_path, jobs = write_summary(tmp_path, declared=["model/norm"], objective="val/loss", mode="min")

    rows = list(csv.DictReader(csv_path.open()))
    assert [row["job"] for row in rows] == ["0", "1", "2", "3"]
    assert list(rows[0]) == [
        "job",
        "model/norm",
        "model.n_heads",
        "params",
        "flops_per_token",
        "val/accuracy",
        "val/loss",
        "test/loss",
        "wall_s",
        "status",
        "error",
        "dir",
    ]  # the fixed override and train/ metrics are not columns
    assert rows[0]["model/norm"] == "layernorm" and rows[0]["params"] == "1000" and rows[0]["wall_s"] == "12.3"
    assert rows[1]["val/loss"] == "1.25" and rows[1]["test/loss"] == ""
    assert [row["status"] for row in rows] == ["ok", "ok", "failed", "failed"]
    assert rows[2]["error"].startswith("ConfigError: model.n_heads")
    assert "did not finish" in rows[3]["error"]
    md = md_path.read_text()
    assert "4 jobs: 2 ok, 2 failed. Best val/loss (min): 1.25, job 1." in md
    assert "Every job: `trainer.max_steps=20`" in md
    assert "| 0 | layernorm | 4 | 1,000 | 2,000 |" in md
    assert [job.num for job in jobs] == [0, 1, 2, 3]

    _, md_path, _ = write_summary(tmp_path, objective="val/loss", mode="max")
    assert "Best val/loss (max): 1.5, job 0." in md_path.read_text()


def test_a_declared_key_gets_a_column_even_where_every_job_has_the_same_value(tmp_path: Path) -> None:
    for num in range(2):
        fake_job(tmp_path, num, [f"model.n_layers={num + 1}", "seed=0"], job={"num": num, "status": "ok"})
    header = write_summary(tmp_path)[0].read_text().splitlines()[0].split(",")
    assert "model.n_layers" in header and "seed" not in header
    header = write_summary(tmp_path, declared=["seed"])[0].read_text().splitlines()[0].split(",")
    assert header[:3] == ["job", "model.n_layers", "seed"]


def test_a_file_cut_off_by_a_kill_reads_as_missing_and_a_train_objective_is_listed(tmp_path: Path) -> None:
    fake_job(tmp_path, 0, ["a=1"], job={"num": 0, "status": "ok", "optimized_metric": "train/loss"})
    (tmp_path / "0" / "metrics.json").write_text('{"train/loss": 1.5, "val/loss": 1.7}')
    fake_job(tmp_path, 1, ["a=2"], run_info={"params": 10, "flops_per_token": 20.0})
    (tmp_path / "1" / "job.json").write_text('{"num": 1, "sta')  # half written
    fake_job(tmp_path, 2, ["a=3"], job={"num": 2, "status": "ok"})
    (tmp_path / "2" / "metrics.json").write_text("[1, 2]")  # not an object

    jobs = read_jobs(tmp_path)
    assert jobs[0].metrics == {"train/loss": 1.5, "val/loss": 1.7}  # the objective, though a train/ metric
    assert (jobs[1].status, jobs[1].error, jobs[1].params, jobs[1].flops_per_token) == ("failed", NO_RESULT, 10, 20.0)
    assert jobs[2].status == "ok" and jobs[2].metrics == {}
    md = write_summary(tmp_path, objective="train/loss")[1].read_text()
    assert "Best train/loss (min): 1.5, job 0." in md


def test_python_m_tfgraph_sweeps_writes_the_summary_from_the_files_and_the_sweeps_own_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for num, (norm, loss) in enumerate([("layernorm", 1.5), ("rmsnorm", 1.25)]):
        fake_job(tmp_path, num, [f"model/norm={norm}", "seed=0"], job={"num": num, "status": "ok"})
        (tmp_path / str(num) / "metrics.json").write_text(json.dumps({"val/loss": loss}))
    fake_job(tmp_path, 2, ["model/norm=rmsnorm", "seed=0"])  # killed: the launcher gave up on the sweep
    multirun_yaml = {
        "optimized_metric": "val/loss",
        "optimized_mode": "max",
        "hydra": {
            "overrides": {"task": ["model/norm=layernorm,rmsnorm", "seed=0"]},
            "sweeper": {"params": {"seed": "0"}},
        },
    }
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(multirun_yaml))

    assert summarize_main([str(tmp_path)]) == 0
    assert "3 jobs, 1 failed" in capsys.readouterr().out
    md = (tmp_path / "summary.md").read_text()
    assert "3 jobs: 2 ok, 1 failed. Best val/loss (max): 1.5, job 0." in md
    assert "| job | model/norm | seed |" in md  # seed is the sweeper's: a column though every job has 0

    assert summarize_main([str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert summarize_main([]) == 2
    done = subprocess.run([sys.executable, "-m", "tfgraph.sweeps", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0 and "summary.md: 3 jobs, 1 failed" in done.stdout


def test_error_line_gives_a_config_errors_first_problem_and_a_remote_tracebacks_last_line() -> None:
    err = tfgraph.ConfigError([("model.n_heads", "not divisible"), ("model.d_ff", "missing")])
    assert error_line(err) == "ConfigError: model.n_heads: not divisible (and 1 more)"
    remote = RuntimeError("\n\n-- Process 1 terminated:\nTraceback (most recent call last):\n  File x\nValueError: bad")
    assert error_line(remote) == "ValueError: bad"
    assert error_line(KeyError("k")) == "KeyError: 'k'"


# ---------------------------------------------------------------------------------------- failed jobs


def test_a_failed_sweep_job_returns_a_failed_job_that_a_number_reading_sweeper_sees_as_the_worst_value() -> None:
    cfg = OmegaConf.create({"optimized_metric": "val/loss", "optimized_mode": "min"})

    def invalid(_: Any) -> dict[str, float]:
        raise tfgraph.ConfigError([("model.n_heads", "not divisible")])

    failed = sweep_job(invalid, cfg)
    assert isinstance(failed, FailedJob) and failed.error == "ConfigError: model.n_heads: not divisible"
    assert float(failed) == math.inf  # hydra-optuna-sweeper reads float(return_value): the worst, for TPE
    cfg.optimized_mode = "max"
    assert float(sweep_job(invalid, cfg)) == -math.inf

    assert sweep_job(lambda _: {"val/loss": 1.5}, cfg) == 1.5
    assert "val/loss is None" in sweep_job(lambda _: {"train/loss": 1.0}, cfg).error
    assert "val/loss is nan" in sweep_job(lambda _: {"val/loss": math.nan}, cfg).error
    cfg.optimized_metric = None  # nothing to optimise: the job is ok
    assert sweep_job(lambda _: {"val/loss": 1.5}, cfg) is None


def test_a_failed_job_reports_the_worst_value_for_the_sweepers_own_direction(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = OmegaConf.create({"optimized_metric": "val/loss", "optimized_mode": "min"})
    assert objective_mode(cfg) == "min"  # no sweeper direction (the basic sweeper, or no Hydra at all)

    class Hydra:  # HydraConfig while an Optuna sweep maximizes
        @staticmethod
        def initialized() -> bool:
            return True

        @staticmethod
        def get() -> Any:
            return OmegaConf.create({"sweeper": {"direction": "maximize"}})

    monkeypatch.setattr(sweep_cli, "HydraConfig", Hydra)
    assert objective_mode(cfg) == "max"

    def invalid(_: Any) -> dict[str, float]:
        raise tfgraph.ConfigError([("model.n_heads", "not divisible")])

    assert float(sweep_job(invalid, cfg)) == -math.inf  # the worst when maximizing, whatever optimized_mode says


def job_config(job_dir: Path, num: int) -> Any:
    return OmegaConf.create(
        {
            "optimized_metric": "val/loss",
            "hydra": {
                "mode": RunMode.MULTIRUN,
                "job": {"num": num},
                "runtime": {"output_dir": str(job_dir)},
                "sweep": {"dir": str(job_dir.parent)},
                "overrides": {"task": []},
            },
        }
    )


def test_the_callback_records_each_job_and_summarizes_after_each_one_in_the_launching_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    callback = SweepSummary()
    callback.on_multirun_start(job_config(tmp_path / "0", 0))
    for num, value in enumerate([2.5, FailedJob("ConfigError: max_params: over the budget")]):
        job_dir = fake_job(tmp_path, num, [f"model.n_layers={num + 1}"])
        callback.on_job_start(job_config(job_dir, num))
        done = JobReturn(overrides=[f"model.n_layers={num + 1}"], status=JobStatus.COMPLETED, _return_value=value)
        callback.on_job_end(job_config(job_dir, num), done)
        assert len(list(csv.DictReader((tmp_path / "summary.csv").open()))) == num + 1  # after each job
    raised = JobReturn(overrides=["model.n_layers=3"], status=JobStatus.FAILED, _return_value=OSError("disk full"))
    job_dir = fake_job(tmp_path, 2, ["model.n_layers=3"])
    callback.on_job_end(job_config(job_dir, 2), raised)

    records = [json.loads((tmp_path / str(num) / "job.json").read_text()) for num in range(3)]
    assert [(r["status"], r["objective"]) for r in records] == [("ok", 2.5), ("failed", None), ("failed", None)]
    assert records[1]["error"] == "ConfigError: max_params: over the budget"
    assert records[2]["error"] == "OSError: disk full"
    assert records[0]["wall_s"] >= 0 and records[0]["overrides"] == ["model.n_layers=1"]
    assert [row["status"] for row in csv.DictReader((tmp_path / "summary.csv").open())] == ["ok", "failed", "failed"]

    # a job run by another process (a joblib worker, a SLURM job) records itself but leaves the summary alone
    job_dir = fake_job(tmp_path, 3, ["model.n_layers=4"])
    elsewhere = SweepSummary()
    elsewhere.launcher_pid = os.getpid() + 1
    elsewhere.on_job_end(job_config(job_dir, 3), JobReturn(status=JobStatus.COMPLETED, _return_value=1.0))
    assert (job_dir / "job.json").is_file() and len(list(csv.DictReader((tmp_path / "summary.csv").open()))) == 3
    callback.on_multirun_end(job_config(tmp_path / "0", 0))  # the end of the sweep: every job
    assert len(list(csv.DictReader((tmp_path / "summary.csv").open()))) == 4

    # another DDP or SLURM process of the same job writes nothing
    monkeypatch.setenv("LOCAL_RANK", "1")
    (tmp_path / "0" / "job.json").unlink()
    callback.on_job_end(job_config(tmp_path / "0", 0), JobReturn(status=JobStatus.COMPLETED, _return_value=1.0))
    assert not (tmp_path / "0" / "job.json").exists()


def test_a_sweep_that_stops_before_its_end_still_writes_the_summary_of_its_jobs_so_far(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    callback = SweepSummary()
    callback.on_multirun_start(job_config(tmp_path / "0", 0))
    job_dir = fake_job(tmp_path, 0, ["model.n_layers=1"])
    callback.on_job_start(job_config(job_dir, 0))
    callback.on_job_end(job_config(job_dir, 0), JobReturn(status=JobStatus.COMPLETED, _return_value=1.0))
    fake_job(tmp_path, 1, ["model.n_layers=2"])  # killed: the launcher raised, on_multirun_end never came
    (tmp_path / "summary.csv").unlink()

    summarize_stopped_sweep()
    assert [row["status"] for row in csv.DictReader((tmp_path / "summary.csv").open())] == ["ok", "failed"]
    assert "the sweep stopped before its end; summary of its 2 jobs so far (1 failed" in capsys.readouterr().err
    assert SweepSummary.running is None
    (tmp_path / "summary.csv").unlink()
    summarize_stopped_sweep()  # once only; and nothing after a sweep that ended
    assert not (tmp_path / "summary.csv").exists()


def test_a_job_whose_run_went_to_another_dir_is_read_from_there_and_a_shared_dir_is_refused(tmp_path: Path) -> None:
    from tfgraph.cli.train import sweep_output_dir

    elsewhere = tmp_path / "scratch" / "run_0"
    elsewhere.mkdir(parents=True)
    (elsewhere / "metrics.json").write_text(json.dumps({"val/loss": 1.5}))
    (elsewhere / "run_info.json").write_text(json.dumps({"params": 10, "flops_per_token": 20.0}))
    fake_job(tmp_path, 0, ["a=1"], job={"num": 0, "status": "ok", "output_dir": str(elsewhere)})
    (job,) = read_jobs(tmp_path)
    assert (job.metrics, job.params) == ({"val/loss": 1.5}, 10)

    cfg = tfgraph.compose(["paths.output_dir=/scratch/run"])
    with pytest.raises(tfgraph.ConfigError, match=r"paths.output_dir: /scratch/run would be the dir of every job"):
        sweep_output_dir(cfg)

    config = OmegaConf.create(  # a per-job dir on the command line: its ${...} is not resolved to find the keys
        {"hydra": {"overrides": {"task": ["paths.output_dir=/s/run_${hydra:job.num}", "a=1,2"]}}}
    )
    assert declared_sweeps(config) == ["a"]


def test_a_sweep_dir_used_again_does_not_pass_off_an_earlier_jobs_results(tmp_path: Path) -> None:
    job_dir = fake_job(
        tmp_path,
        0,
        ["model.n_layers=1"],
        job={"num": 0, "status": "ok"},
        run_info={"params": 1000},
        metrics={"val/loss": 1.0},
    )
    callback = SweepSummary()
    callback.on_multirun_start(job_config(job_dir, 0))
    callback.on_job_start(job_config(job_dir, 0))  # this time the job is killed before it writes anything
    assert not any((job_dir / name).exists() for name in ("job.json", "run_info.json", "metrics.json"))
    (job,) = read_jobs(tmp_path)
    assert (job.status, job.error, job.params, job.metrics) == ("failed", NO_RESULT, None, {})


# ------------------------------------------------------------------------------------ budget, divergence


def train_config(tmp_path: Path, data: Path | str, *overrides: str) -> Any:
    return tfgraph.compose(
        [
            "model=gpt2_tiny",
            "data=text",
            f"data.path={data}",
            "data.block_size=16",
            "trainer.max_steps=3",
            "trainer.val_check_interval=100",
            "trainer.limit_val_batches=1",
            "trainer.num_sanity_val_steps=0",
            "trainer.log_every_n_steps=1",
            "~logger",
            "callbacks=none",
            "test=false",
            f"paths.output_dir={tmp_path / 'run'}",
            *QUIET,
            *overrides,
        ]
    )


def test_an_invalid_model_or_one_over_the_budget_is_refused_before_any_data_is_read(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_file.txt"  # reading it would be a DataError
    with pytest.raises(tfgraph.ConfigError, match=r"model.n_heads: model.d_model \(64\) is not divisible"):
        train(train_config(tmp_path, missing, "model.n_heads=5"))
    with pytest.raises(tfgraph.ConfigError, match=r"max_params: the model has at least [\d,]+ parameters before"):
        train(train_config(tmp_path, missing, "max_params=50000"))
    with pytest.raises(tfgraph.ConfigError, match=r"max_params: expected a positive number"):
        train(train_config(tmp_path, missing, "max_params=-3"))
    with pytest.raises(tfgraph.ConfigError, match=r"optimized_mode: expected min or max, got 'maximum'"):
        train(train_config(tmp_path, missing, "optimized_mode=maximum"))


def test_the_budget_counts_the_datas_vocabulary_and_run_info_has_the_exact_count(tmp_path: Path) -> None:
    data = text_file(tmp_path / "text.txt")
    model_cfg = OmegaConf.to_container(tfgraph.compose(["model=gpt2_tiny"]).model)
    without_vocab = model_info({**model_cfg, "vocab_size": 1})["params"]
    # over the exact count (with the data's vocabulary, tied head) but not over the count without it
    with pytest.raises(tfgraph.ConfigError, match=r"max_params: the model has [\d,]+ parameters with the data's \d+"):
        train(train_config(tmp_path, data, f"max_params={without_vocab}"))

    metrics = train(train_config(tmp_path, data, f"max_params={without_vocab + 10_000}"))
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    vocab = json.loads((tmp_path / "run" / "tokenizer.json").read_text())
    model = tfgraph.build_model({**model_cfg, "vocab_size": info["vocab_size"]})
    assert info["params"] == model.num_parameters() == without_vocab + 64 * (info["vocab_size"] - 1)
    assert info["flops_per_token"] > info["params"] and info["flops_seq_len"] == 256
    assert vocab and math.isfinite(metrics["val/loss"])


def test_a_diverging_loss_stops_training_with_training_diverged(tmp_path: Path) -> None:
    data = text_file(tmp_path / "text.txt")
    with pytest.raises(TrainingDiverged, match=r"training diverged: the loss is (nan|inf) at step \d"):
        train(train_config(tmp_path, data, "optimizer.lr=1e30", "trainer.max_steps=20"))
    assert (tmp_path / "run" / "run_info.json").is_file()  # written before training: the summary lists it


# ------------------------------------------------------------------------------------------ the presets


def hydra_config(*overrides: str) -> Any:
    register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_the_optuna_preset_searches_the_architecture_under_a_budget_in_the_direction_of_optimized_mode() -> None:
    cfg = hydra_config("hparams_search=optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert {"model/norm", "model/position", "model/ffn", "model/layer", "model.n_layers", "model.d_model"} <= set(
        sweeper.params
    )
    assert {"model.n_heads", "optimizer.lr"} <= set(sweeper.params) and cfg.max_params > 0
    assert sweeper.max_failure_rate == 1.0
    assert hydra_config("hparams_search=optuna", "optimized_mode=max").hydra.sweeper.direction == "maximize"
    wrong = hydra_config("hparams_search=optuna", "optimized_mode=maximum")
    with pytest.raises(Exception, match=r"optimized_mode: expected min or max, got 'maximum'"):
        OmegaConf.to_container(wrong.hydra.sweeper, resolve=True)
    for option in ("norm", "position", "ffn", "layer"):  # every choice names an option of its group
        choices = sweeper.params[f"model/{option}"].removeprefix("choice(").removesuffix(")").split(", ")
        assert set(choices) <= {p.stem for p in (conf_dir() / "model" / option).glob("*.yaml")}


def test_the_ablation_sweeps_eight_architectures_at_one_parameter_budget() -> None:
    import itertools

    params = hydra_config("experiment=ablation_shakespeare").hydra.sweeper.params
    grid = [[(key, value) for value in str(values).split(",")] for key, values in params.items()]
    counts = []
    for combination in itertools.product(*grid):
        cfg = tfgraph.compose(["experiment=ablation_shakespeare", *(f"{key}={value}" for key, value in combination)])
        assert cfg.trainer.max_steps == 1500 and cfg.data.block_size == 128
        counts.append(tfgraph.build_model({**cfg.model, "vocab_size": 89}).num_parameters())  # shakespeare's 89
    assert len(counts) == 8 and len(set(counts)) > 1
    assert max(counts) / min(counts) - 1 < 0.005  # the same budget to within 0.5%


def test_the_launcher_presets_pick_the_plugins_and_size_a_slurm_job_from_the_trainer() -> None:
    assert hydra_config("launcher=joblib").hydra.launcher._target_.endswith("JoblibLauncher")
    local = hydra_config("launcher=submitit_local").hydra.launcher
    assert local._target_.endswith("LocalLauncher") and local.tasks_per_node == 1 and local.gpus_per_node == 0

    slurm = hydra_config("launcher=submitit_slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2")
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher.partition is None and "account" in launcher and "qos" in launcher
    assert hydra_config("launcher=submitit_slurm", "trainer=cpu").hydra.launcher.gpus_per_node == 0
    assert hydra_config("launcher=submitit_slurm").hydra.launcher.gpus_per_node == 0  # accelerator auto: none

    every_gpu = hydra_config("launcher=submitit_slurm", "trainer=ddp")  # devices: -1
    with pytest.raises(Exception, match=r"trainer.devices=-1 cannot size a SLURM job"):
        OmegaConf.to_container(every_gpu.hydra.launcher, resolve=True)


def test_a_launcher_or_sweeper_whose_plugin_is_missing_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tfgraph.cli import train as train_cli

    train_cli.check_plugins(["-m", "launcher=joblib", "hparams_search=optuna"])  # installed here: no error
    assert not train_cli.installed("hydra_plugins.no_such_plugin") and not train_cli.installed("no_such_pkg.x")
    monkeypatch.setattr(train_cli, "installed", lambda module: module != "hydra_plugins.hydra_optuna_sweeper")
    with pytest.raises(SystemExit) as exit_info:
        train_cli.check_plugins(["-m", "hparams_search=optuna"])
    assert exit_info.value.code == 2
    assert 'hydra_optuna_sweeper: install the sweeps extra (pip install -e ".[sweeps]")' in capsys.readouterr().err


# -------------------------------------------------------------------------------------- real multiruns


def train_multirun(folder: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``tfgraph.cli.train -m`` in ``folder`` over a small text written there, quiet, the sweep in ``folder/sweep``;
    the model, the steps and what is swept are ``args``. The command must succeed."""
    data = text_file(folder / "text.txt")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfgraph.cli.train",
            "-m",
            "data=text",
            f"data.path={data}",
            "data.block_size=16",
            *QUIET,
            f"hydra.sweep.dir={folder / 'sweep'}",
            *args,
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def multirun(tmp_path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """:func:`train_multirun` of jobs of one fast_dev_run step each."""
    return train_multirun(tmp_path, "debug=fast_dev_run", *args, timeout=timeout)


def summary_rows(tmp_path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((tmp_path / "sweep" / "summary.csv").open()))


@pytest.mark.slow
def test_a_multirun_runs_every_combination_and_a_failed_job_does_not_stop_the_summary(tmp_path: Path) -> None:
    multirun(tmp_path, "model/norm=layernorm,rmsnorm", "model.n_heads=4,5")
    rows = summary_rows(tmp_path)
    assert [(row["model/norm"], row["model.n_heads"], row["status"]) for row in rows] == [
        ("layernorm", "4", "ok"),
        ("layernorm", "5", "failed"),
        ("rmsnorm", "4", "ok"),
        ("rmsnorm", "5", "failed"),
    ]
    assert all("model.n_heads: model.d_model (64) is not divisible" in row["error"] for row in rows[1::2])
    for row in rows[::2]:
        job_dir = tmp_path / "sweep" / row["dir"]
        vocab = json.loads((job_dir / "run_info.json").read_text())["vocab_size"]
        cfg = tfgraph.compose(["model=gpt2_tiny", f"model/norm={row['model/norm']}"]).model
        assert int(row["params"]) == tfgraph.build_model({**cfg, "vocab_size": vocab}).num_parameters()
        assert float(row["flops_per_token"]) > 0 and float(row["wall_s"]) > 0
        assert float(row["val/loss"]) == json.loads((job_dir / "metrics.json").read_text())["val/loss"]
    assert rows[0]["params"] != rows[2]["params"]  # RMSNorm has no biases
    assert "4 jobs: 2 ok, 2 failed." in (tmp_path / "sweep" / "summary.md").read_text()


@pytest.mark.slow
def test_an_optuna_search_goes_on_past_trials_over_the_budget_which_optuna_sees_as_the_worst(tmp_path: Path) -> None:
    import optuna

    budget, storage = 300_000, f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["hparams_search=optuna", "hydra.sweeper.n_trials=3", f"max_params={budget}", "seed=0"]
    multirun(tmp_path, *args, f"hydra.sweeper.storage='{storage}'")
    rows = summary_rows(tmp_path)
    assert len(rows) == 3
    failed = [row for row in rows if row["status"] == "failed"]
    assert failed and len(failed) < 3  # with seed 0, Optuna's first draws include models over the budget
    assert all("max_params" in row["error"] for row in failed)
    assert all(int(row["params"]) <= budget for row in rows if row["status"] == "ok")

    study = optuna.load_study(study_name="tfgraph", storage=storage)  # kept in SQLite, as the preset says
    values = {trial.number: trial.value for trial in study.trials}
    for row in rows:
        expected = math.inf if row["status"] == "failed" else float(row["val/loss"])
        assert values[int(row["job"])] == pytest.approx(expected)
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(float(r["val/loss"]) for r in rows if r["status"] == "ok"))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["submitit_local", "joblib"])
def test_a_sweep_through_a_launcher_of_other_processes_is_summarized(tmp_path: Path, launcher: str) -> None:
    multirun(tmp_path, f"launcher={launcher}", "model/norm=layernorm,rmsnorm")
    rows = summary_rows(tmp_path)
    assert [(row["model/norm"], row["status"]) for row in rows] == [("layernorm", "ok"), ("rmsnorm", "ok")]
    assert all(int(row["params"]) > 0 and float(row["val/loss"]) > 0 for row in rows)
    if launcher == "submitit_local":
        assert (tmp_path / "sweep" / ".submitit").is_dir()
    assert [job.num for job in read_jobs(tmp_path / "sweep")] == [0, 1]
