"""The architecture ablation's table and plot, from its sweep dir (the jobs' own files, as summary.csv is).

    python experiments/results/ablation.py [sweep dir] [out.png]

Defaults: experiments/results/runs/ablation and experiments/results/ablation.png. Prints the README's markdown
table (jobs ordered by val bits per char) and draws each job's val bits per char as a bar, with its val loss curve
beside it.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import matplotlib

from tfgraph.sweeps import read_jobs

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
KEYS = ("model/norm", "model/position", "model/layer")


def bits(nats: float | None) -> float:
    return math.nan if nats is None else nats / math.log(2)


def val_curve(job_dir: Path) -> tuple[list[int], list[float]]:
    steps, values = [], []
    with (job_dir / "csv" / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("val/loss"):
                steps.append(int(row["step"]) + 1)
                values.append(bits(float(row["val/loss"])))
    return steps, values


def main(sweep_dir: Path, out: Path) -> None:
    jobs = [job for job in read_jobs(sweep_dir) if job.status == "ok"]
    failed = [job for job in read_jobs(sweep_dir) if job.status != "ok"]
    jobs.sort(key=lambda job: job.metrics.get("val/loss", math.inf))
    label = {job.num: " / ".join(job.overrides[key] for key in KEYS) for job in jobs}

    print("| rank | norm | position | layer | parameters | val bits/char | test bits/char | wall time |")
    print("| ---: | --- | --- | --- | ---: | ---: | ---: | ---: |")
    for rank, job in enumerate(jobs, 1):
        norm, position, layer = (job.overrides[key] for key in KEYS)
        print(
            f"| {rank} | {norm} | {position} | {layer} | {job.params:,} | "
            f"{bits(job.metrics.get('val/loss')):.3f} | {bits(job.metrics.get('test/loss')):.3f} | "
            f"{job.wall_s:.0f} s |"
        )
    for job in failed:
        print(f"\nfailed: job {job.num} {job.overrides}: {job.error}")

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.1, 1]})
    values = [bits(job.metrics.get("val/loss")) for job in jobs]
    bars.barh(range(len(jobs)), values, color="tab:blue")
    bars.set_yticks(range(len(jobs)), [label[job.num] for job in jobs])
    bars.invert_yaxis()
    low, high = min(values), max(values)
    bars.set_xlim(low - 0.6 * (high - low) - 0.01, high + 0.3 * (high - low) + 0.01)
    for i, value in enumerate(values):
        bars.text(value, i, f" {value:.3f}", va="center")
    bars.set_xlabel("val bits per char after 1,500 steps (lower is better)")
    bars.set_title("norm / position / layer graph")
    for job in jobs:
        curves.plot(*val_curve(job.dir), marker="o", label=label[job.num])
    curves.set_xlabel("step")
    curves.set_ylabel("val bits per char")
    curves.set_title("validation during training")
    curves.legend(fontsize=7)
    fig.suptitle("gpt2_tiny on shakespeare_char: 8 architecture variants, one seed each")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        Path(args[0]) if args else HERE / "runs" / "ablation",
        Path(args[1]) if len(args) > 1 else HERE / "ablation.png",
    )
