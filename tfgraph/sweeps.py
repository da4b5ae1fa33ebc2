"""A sweep's summary: one row per job, read from the files each job left in its output dir.

Every job of a ``tfgraph-train -m`` sweep runs in its own dir under the sweep dir and leaves there:

- ``.hydra/overrides.yaml``: its overrides (Hydra writes it before the job starts);
- ``run_info.json``: the model's parameters and forward FLOPs per token (:func:`tfgraph.train.train`, once the
  model is built);
- ``metrics.json``: its final metrics (``train``, at the end);
- ``job.json``: its status, the first line of its error, its objective and wall time (the ``SweepSummary``
  Hydra callback, when the job ends), and where ``run_info.json`` and ``metrics.json`` are when
  ``paths.output_dir`` put the run elsewhere.

When a job ends it keeps of its checkpoints (the ``*.ckpt`` files in its run dir) what ``sweep_checkpoints``
asks for (:data:`KEEP_CHECKPOINTS`, :func:`prune_checkpoints`): by default the best by ``optimized_metric``,
none with ``debug=limit``; ``summary.md`` says which, and how many files and bytes the jobs kept.

The summary reads only these files, so it works whichever launcher ran the jobs (in this process, in joblib
workers or as SLURM jobs) and lists a job that died without a word as failed. A sweep that stops before its
end (Ctrl-C; the submitit launcher raises for a job killed outright) has its summary written by
``tfgraph-train`` as it exits; write it again from the files at any time with

    python -m tfgraph.sweeps <sweep dir>
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from tfgraph.registry import ConfigError

JOB_FILE = "job.json"
RUN_INFO_FILE = "run_info.json"
METRICS_FILE = "metrics.json"
OVERRIDES_FILE = Path(".hydra", "overrides.yaml")
METRIC_PREFIXES = ("val/", "test/")  # the metrics the summary lists
NO_RESULT = "no job.json: the job did not finish (killed, timed out or still running); see its log"
CHECKPOINT_GLOB = "*.ckpt"
LAST_CHECKPOINT = "last.ckpt"
KEEP_CHECKPOINTS = {  # sweep_checkpoints: what each job keeps of its checkpoints when it ends
    "best": "its best by optimized_metric, or last.ckpt where callbacks.model_checkpoint saved none",
    "last": "last.ckpt, its final weights",
    "all": "every checkpoint",
    "none": "no checkpoint",
}


@dataclass
class JobResult:
    """One job of a sweep, as its files describe it."""

    num: int
    dir: Path
    overrides: dict[str, str]
    status: str = "failed"  # ok | failed
    error: str = ""
    wall_s: float | None = None
    optimized_metric: str | None = None  # the metric the sweep optimised, listed even outside val/ and test/
    params: int | None = None
    flops_per_token: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None  # where the run wrote (paths.output_dir); None: the job's dir


def error_line(err: BaseException) -> str:
    """One line that says why a job failed: ``ConfigError: model.n_heads: ...``, ``TrainingDiverged: ...``.

    A ConfigError gives its first problem (and how many more there are); an error that carries another
    process's traceback (DDP's spawned processes) gives that traceback's last line, the error itself.
    """
    if isinstance(err, ConfigError) and err.problems:
        path, message = err.problems[0]
        more = f" (and {len(err.problems) - 1} more)" if len(err.problems) > 1 else ""
        return f"{type(err).__name__}: {path + ': ' if path else ''}{message}{more}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def read_jobs(sweep_dir: str | Path) -> list[JobResult]:
    """Every job under ``sweep_dir`` (each dir holding ``.hydra/overrides.yaml``), in job-number order."""
    sweep_dir = Path(sweep_dir)
    jobs = [_read_job(path.parent.parent) for path in sweep_dir.rglob(str(OVERRIDES_FILE))]
    return sorted(jobs, key=lambda job: (job.num, str(job.dir)))


def _read_job(job_dir: Path) -> JobResult:
    overrides = dict(split_override(line) for line in yaml.safe_load((job_dir / OVERRIDES_FILE).read_text()) or [])
    record = _json(job_dir / JOB_FILE)
    run_dir = Path(record["output_dir"]) if record and record.get("output_dir") else job_dir  # paths.output_dir
    info = _json(run_dir / RUN_INFO_FILE) or {}
    metrics = _json(run_dir / METRICS_FILE) or {}
    if record is None:
        return JobResult(
            _job_num(job_dir),
            job_dir,
            overrides,
            error=NO_RESULT,
            params=info.get("params"),
            flops_per_token=info.get("flops_per_token"),
            run_dir=run_dir,
        )
    objective = record.get("optimized_metric")
    return JobResult(
        num=int(record.get("num", _job_num(job_dir))),
        dir=job_dir,
        overrides=overrides,
        status=record.get("status", "failed"),
        error=record.get("error") or "",
        wall_s=record.get("wall_s"),
        optimized_metric=objective,
        params=info.get("params"),
        flops_per_token=info.get("flops_per_token"),
        metrics={k: float(v) for k, v in metrics.items() if k.startswith(METRIC_PREFIXES) or k == objective},
        run_dir=run_dir,
    )


def _json(path: Path) -> dict[str, Any] | None:
    """The file's JSON object; None when there is none, or when the file is not JSON (cut off by a kill)."""
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: str | Path, value: Any) -> None:
    """``value`` as indented JSON (NaN and infinities as JSON's extension, which Python reads back), written to
    a temporary file first and moved into place, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def _job_num(job_dir: Path) -> int:
    """The job's number from Hydra's own record of it (``.hydra/hydra.yaml``), -1 when there is none."""
    path = job_dir / ".hydra" / "hydra.yaml"
    if path.is_file():
        num = (((yaml.safe_load(path.read_text()) or {}).get("hydra") or {}).get("job") or {}).get("num")
        if isinstance(num, int):
            return num
    return -1


def check_sweep_checkpoints(value: Any) -> str:
    """``sweep_checkpoints``: one of :data:`KEEP_CHECKPOINTS`, else a ConfigError listing them."""
    if value not in KEEP_CHECKPOINTS:
        raise ConfigError.at("sweep_checkpoints", f"expected one of {', '.join(KEEP_CHECKPOINTS)}, got {value!r}")
    return value


def prune_checkpoints(run_dir: str | Path, keep: str) -> list[Path]:
    """Remove the checkpoints (``*.ckpt``) under a finished job's ``run_dir`` that ``keep`` (one of
    :data:`KEEP_CHECKPOINTS`) does not keep: ``best`` keeps those other than ``last.ckpt`` (what
    ``callbacks.model_checkpoint`` saved, the best by ``optimized_metric``), or ``last.ckpt`` where there are
    none; ``last`` keeps ``last.ckpt``; ``all`` every one; ``none`` none. Returns the files removed."""
    files = sorted(Path(run_dir).rglob(CHECKPOINT_GLOB))
    last = [f for f in files if f.name == LAST_CHECKPOINT]
    best = [f for f in files if f.name != LAST_CHECKPOINT]
    kept = {"best": best or last, "last": last, "all": files, "none": []}[check_sweep_checkpoints(keep)]
    removed = [f for f in files if f not in kept]
    for f in removed:
        f.unlink(missing_ok=True)
    return removed


def kept_checkpoints(jobs: Sequence[JobResult]) -> list[Path]:
    """The checkpoints (``*.ckpt``) the jobs' run dirs hold."""
    return [f for job in jobs for f in sorted((job.run_dir or job.dir).rglob(CHECKPOINT_GLOB)) if f.is_file()]


def split_override(override: str) -> tuple[str, str]:
    """``model/norm=rmsnorm`` -> ``("model/norm", "rmsnorm")``; ``~callbacks.x`` -> ``("~callbacks.x", "")``."""
    key, _, value = override.partition("=")
    return key, value


def swept_keys(jobs: Sequence[JobResult], declared: Iterable[str] = ()) -> list[str]:
    """The override keys that tell the jobs apart: those declared as swept and those whose value differs."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    declared = set(declared)
    return [key for key in keys if key in declared or len({job.overrides.get(key) for job in jobs}) > 1]


def write_summary(
    sweep_dir: str | Path,
    *,
    declared: Iterable[str] = (),
    objective: str | None = None,
    mode: str = "min",
    checkpoints: str | None = None,
) -> tuple[Path, Path, list[JobResult]]:
    """Write ``summary.csv`` and ``summary.md`` into ``sweep_dir``.

    Args:
        sweep_dir: the sweep's dir (``hydra.sweep.dir``).
        declared: the override keys the sweep varies (they get a column even where every job has one value).
        objective: the metric the sweep optimises (``optimized_metric``); ``summary.md`` names the best job.
        mode: ``min`` or ``max``: which end of ``objective`` is best.
        checkpoints: the sweep's ``sweep_checkpoints``, which ``summary.md`` states beside the checkpoints kept.

    Returns:
        The two paths and the jobs, as listed.
    """
    sweep_dir = Path(sweep_dir)
    jobs = read_jobs(sweep_dir)
    keys = swept_keys(jobs, declared)
    metric_names = sorted({name for job in jobs for name in job.metrics}, key=lambda n: (not n.startswith("val/"), n))
    columns = ["job", *keys, "params", "flops_per_token", *metric_names, "wall_s", "status", "error", "dir"]
    rows = [
        {
            "job": job.num,
            **{key: job.overrides.get(key, "") for key in keys},
            "params": job.params,
            "flops_per_token": job.flops_per_token,
            **{name: job.metrics.get(name) for name in metric_names},
            "wall_s": None if job.wall_s is None else round(job.wall_s, 1),
            "status": job.status,
            "error": job.error,
            "dir": _relative(job.dir, sweep_dir),
        }
        for job in jobs
    ]
    csv_path = sweep_dir / "summary.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)

    fixed = [f"{key}={value}" for key, value in _common_overrides(jobs).items() if key not in keys]
    md_path = sweep_dir / "summary.md"
    md_path.write_text(_markdown(jobs, rows, columns, fixed, objective, mode, checkpoints))
    return csv_path, md_path, jobs


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _common_overrides(jobs: Sequence[JobResult]) -> dict[str, str]:
    """The overrides every job shares."""
    if not jobs:
        return {}
    common = dict(jobs[0].overrides)
    for job in jobs[1:]:
        common = {k: v for k, v in common.items() if job.overrides.get(k) == v}
    return common


def best_job(jobs: Sequence[JobResult], objective: str, mode: str = "min") -> JobResult | None:
    """The ok job with the best finite ``objective`` (``mode`` min or max), None when no job has one."""
    scored = [job for job in jobs if job.status == "ok" and math.isfinite(job.metrics.get(objective, math.nan))]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda job: job.metrics[objective])


def _markdown(
    jobs: Sequence[JobResult],
    rows: list[dict[str, Any]],
    columns: list[str],
    fixed: list[str],
    objective: str | None,
    mode: str,
    checkpoints: str | None = None,
) -> str:
    failed = sum(job.status != "ok" for job in jobs)
    lines = ["# Sweep summary", "", f"{len(jobs)} jobs: {len(jobs) - failed} ok, {failed} failed."]
    if objective:
        best = best_job(jobs, objective, mode)
        if best is not None:
            where = "" if best.dir.name == str(best.num) else f" ({best.dir.name})"
            lines[-1] += f" Best {objective} ({mode}): {best.metrics[objective]:.4g}, job {best.num}{where}."
    if fixed:
        lines += ["", "Every job: `" + " ".join(fixed) + "`."]
    lines += ["", _checkpoints_line(jobs, checkpoints)]
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(name, row[name]) for name in columns) + " |")
    return "\n".join(lines) + "\n"


def _checkpoints_line(jobs: Sequence[JobResult], keep: str | None) -> str:
    """``Checkpoints (sweep_checkpoints=best; or last, all, none): each job keeps ...; 4 files, 1.2 MB in ...``"""
    files = kept_checkpoints(jobs)
    size = sum(f.stat().st_size for f in files)
    found = f"{len(files)} file{'s' * (len(files) != 1)}, {size / 1e6:.1f} MB in the jobs' dirs"
    if keep not in KEEP_CHECKPOINTS:
        return f"Checkpoints: {found}."
    others = ", ".join(k for k in KEEP_CHECKPOINTS if k != keep)
    return f"Checkpoints (sweep_checkpoints={keep}; or {others}): each job keeps {KEEP_CHECKPOINTS[keep]}; {found}."


def _cell(name: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    if name == "params":
        return f"{value:,}"
    if name == "flops_per_token":
        return f"{value:,.0f}"
    if isinstance(value, float) and name != "wall_s":
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def summarize_dir(sweep_dir: str | Path) -> tuple[Path, Path, list[JobResult]]:
    """Write the summary of the sweep in ``sweep_dir`` from its files alone: the swept keys, objective and mode
    come from the ``multirun.yaml`` Hydra wrote there when the sweep started."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError.at("sweep_dir", f"{sweep_dir} is not a directory")
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return write_summary(sweep_dir)
    config = OmegaConf.load(path)
    assert isinstance(config, DictConfig)
    return write_summary(
        sweep_dir,
        declared=declared_sweeps(config),
        objective=OmegaConf.select(config, "optimized_metric", throw_on_resolution_failure=False),
        mode=OmegaConf.select(config, "optimized_mode", default="min", throw_on_resolution_failure=False),
        checkpoints=OmegaConf.select(config, "sweep_checkpoints", throw_on_resolution_failure=False),
    )


def declared_sweeps(config: DictConfig) -> list[str]:
    """The override keys a multirun varies: sweeps on the command line (``a=1,2``) and the sweeper's params."""
    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)  # ${...} in a value stays as is
    parsed = OverridesParser.create().parse_overrides([str(override) for override in task])
    keys = [override.get_key_element() for override in parsed if override.is_sweep_override()]
    params = OmegaConf.select(config, "hydra.sweeper.params", throw_on_resolution_failure=False) or {}
    return keys + [str(key) for key in params]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tfgraph.sweeps <sweep dir>``: (re)write the sweep's summary.md and summary.csv."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m tfgraph.sweeps <sweep dir>  (writes summary.md and summary.csv there)", file=sys.stderr)
        return 2
    try:
        _, md_path, jobs = summarize_dir(args[0])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = sum(job.status != "ok" for job in jobs)
    print(f"{md_path}: {len(jobs)} jobs, {failed} failed")
    return 0


__all__ = [
    "KEEP_CHECKPOINTS",
    "JobResult",
    "best_job",
    "check_sweep_checkpoints",
    "declared_sweeps",
    "error_line",
    "prune_checkpoints",
    "read_jobs",
    "summarize_dir",
    "swept_keys",
    "write_json",
    "write_summary",
]


if __name__ == "__main__":
    sys.exit(main())
