"""The architecture ablation's table and plot, from its sweep dir (the jobs' own files, as summary.csv is).

    python experiments/results/ablation.py [sweep dir] [out.png]

Defaults: experiments/results/runs/ablation and experiments/results/ablation.png. Jobs with the same norm,
position and layer graph but another ``seed`` are one configuration. Prints the README's markdown table
(configurations ordered by their mean val bits per char, each seed's value beside the mean) and draws each
configuration's mean as a bar with its seeds as dots, and its mean val curve beside it.
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

from tfgraph.sweeps import JobResult, read_jobs

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
KEYS = ("model/norm", "model/position", "model/layer")


def bits(nats: float | None) -> float:
    return math.nan if nats is None else nats / math.log(2)


def val_curve(job_dir: Path) -> dict[int, float]:
    """Val bits per char by step, from the job's csv log."""
    curve = {}
    with (job_dir / "csv" / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("val/loss"):
                curve[int(row["step"]) + 1] = bits(float(row["val/loss"]))
    return curve


def mean_curve(jobs: list[JobResult]) -> tuple[list[int], list[float]]:
    curves = [val_curve(job.dir) for job in jobs]
    steps = sorted(set.intersection(*(set(curve) for curve in curves)))
    return steps, [statistics.fmean(curve[step] for curve in curves) for step in steps]


def main(sweep_dir: Path, out: Path) -> None:
    jobs = read_jobs(sweep_dir)
    configs: dict[tuple[str, ...], list[JobResult]] = defaultdict(list)
    for job in jobs:
        if job.status == "ok":
            configs[tuple(job.overrides[key] for key in KEYS)].append(job)
    for runs in configs.values():
        runs.sort(key=lambda job: int(job.overrides.get("seed", 0)))

    def val(job: JobResult) -> float:
        return bits(job.metrics.get("val/loss"))

    def test(job: JobResult) -> float:
        return bits(job.metrics.get("test/loss"))

    ranked = sorted(configs, key=lambda config: statistics.fmean(val(job) for job in configs[config]))
    seeds = sorted({job.overrides.get("seed", "0") for runs in configs.values() for job in runs}, key=int)

    seed_columns = " | ".join(f"val seed {seed}" for seed in seeds)
    print(f"| rank | norm | position | layer | parameters | {seed_columns} | val mean | test mean | wall time |")
    print("| ---: | --- | --- | --- | ---: | " + "---: | " * len(seeds) + "---: | ---: | ---: |")
    for rank, config in enumerate(ranked, 1):
        runs = configs[config]
        by_seed = {job.overrides.get("seed", "0"): val(job) for job in runs}
        cells = " | ".join(f"{by_seed[seed]:.3f}" if seed in by_seed else "" for seed in seeds)
        print(
            f"| {rank} | {' | '.join(config)} | {runs[0].params:,} | {cells} | "
            f"**{statistics.fmean(val(job) for job in runs):.3f}** | "
            f"{statistics.fmean(test(job) for job in runs):.3f} | "
            f"{statistics.fmean(job.wall_s for job in runs):.0f} s |"
        )
    for job in jobs:
        if job.status != "ok":
            print(f"\nfailed: job {job.num} {job.overrides}: {job.error}")

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.1, 1]})
    labels = [" / ".join(config) for config in ranked]
    means = [statistics.fmean(val(job) for job in configs[config]) for config in ranked]
    bars.barh(range(len(ranked)), means, color="tab:blue", alpha=0.8, label="mean over seeds")
    for i, config in enumerate(ranked):
        points = [val(job) for job in configs[config]]
        bars.plot(points, [i] * len(points), "k.", label="one seed" if i == 0 else None)
        bars.text(max(points), i, f"  {means[i]:.3f}", va="center")
    bars.set_yticks(range(len(ranked)), labels)
    bars.invert_yaxis()
    every = [val(job) for runs in configs.values() for job in runs]
    low, high = min(every), max(every)
    bars.set_xlim(low - 0.6 * (high - low) - 0.01, high + 0.35 * (high - low) + 0.01)
    bars.set_xlabel("val bits per char after 1,500 steps (lower is better)")
    bars.set_title("norm / position / layer graph")
    bars.legend(loc="upper right", fontsize=8)
    for config, label in zip(ranked, labels, strict=True):
        curves.plot(*mean_curve(configs[config]), marker="o", label=label)
    curves.set_xlabel("step")
    curves.set_ylabel("val bits per char (mean over seeds)")
    curves.set_title("validation during training")
    curves.legend(fontsize=7)
    fig.suptitle(f"gpt2_tiny on shakespeare_char: {len(ranked)} architecture variants x {len(seeds)} seeds")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        Path(args[0]) if args else HERE / "runs" / "ablation",
        Path(args[1]) if len(args) > 1 else HERE / "ablation.png",
    )
