"""Plot a tfgraph run's loss curve: train/loss and val/loss against the optimizer step.

    python experiments/plot_run.py <run dir> [out.png]

Reads <run dir>/csv/metrics.csv (the csv logger's file) and writes out.png (default <run dir>/loss.png).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_series(path: Path, key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            value = row.get(key)
            if value not in (None, ""):
                steps.append(int(row["step"]))
                values.append(float(value))
    return steps, values


def plot(run_dir: Path, out: Path) -> Path:
    metrics = run_dir / "csv" / "metrics.csv"
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key, style in (("train/loss", dict(lw=1.0, alpha=0.8)), ("val/loss", dict(lw=2.0, marker="o"))):
        steps, values = read_series(metrics, key)
        if steps:
            ax.plot(steps, values, label=key, **style)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats per token)")
    ax.set_title(f"{run_dir.name}: loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str]) -> None:
    if not argv or len(argv) > 2:
        sys.exit(__doc__)
    run_dir = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 else run_dir / "loss.png"
    print(plot(run_dir, out))


if __name__ == "__main__":
    main(sys.argv[1:])
