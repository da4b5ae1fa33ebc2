"""``tfgraph-eval``: rebuild a task from a checkpoint alone and report its test (or val) metrics.

    tfgraph-eval ckpt_path=outputs/2025-01-01/12-00-00/checkpoints/last.ckpt
    tfgraph-eval ckpt_path=... split=val

A thin wrapper over :func:`tfgraph.evaluate.evaluate`. Exit codes as ``tfgraph-train``'s.
"""

from __future__ import annotations

from omegaconf import DictConfig

from tfgraph.cli import command
from tfgraph.cli.train import run_job


def main() -> None:
    """The console script: compose the ``eval`` config from the command line, evaluate, print the metrics."""

    @command("eval")
    def run(cfg: DictConfig) -> None:
        from tfgraph.evaluate import evaluate

        metrics = run_job(evaluate, cfg)
        width = max(map(len, metrics), default=0)
        for key, value in sorted(metrics.items()):
            print(f"{key:<{width}}  {value:.6g}")

    run()


if __name__ == "__main__":
    main()
