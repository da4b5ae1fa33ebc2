"""What the benchmarks share: a description of the machine, and writing a result table into experiments/README.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

README_PATH = Path(__file__).resolve().parent.parent / "README.md"


def environment() -> dict:
    """The CPU, core and thread counts and the torch and Python versions a measurement ran with."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def write_readme(benchmark: str, table: str, heading: str) -> None:
    """Replace ``benchmark``'s part of experiments/README.md (between its markers); where the markers are missing,
    append ``heading`` (the section's title and introduction) and the part."""
    begin = f"<!-- {benchmark}:begin (written by experiments/benchmarks/{benchmark}.py --write-readme) -->"
    end = f"<!-- {benchmark}:end -->"
    section = f"{begin}\n{table}\n{end}"
    text = README_PATH.read_text() if README_PATH.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + f"{heading}\n\n{section}\n"
    README_PATH.write_text(text)
