"""What the benchmarks share: a description of the machine and of the run, timed rounds, memory accounting, fresh
measuring processes, the report's frame, and writing a result table into experiments/README.md."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

R = TypeVar("R")

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


def gpt2_overrides(sizes: Mapping[str, Any], *extra: str) -> list[str]:
    """The Hydra overrides of tfgraph's ``gpt2`` at ``sizes`` (model key -> value), then ``extra``."""
    return ["model=gpt2", *(f"model.{k}={v}" for k, v in sizes.items()), *extra]


def run_record(script: str, argv: list[str] | None = None) -> dict:
    """What a result starts with: the date, the command that ran ``script`` (``argv``: its arguments, the process's
    own unless given) and :func:`environment`."""
    arguments = sys.argv[1:] if argv is None else argv
    return {
        "date": datetime.date.today().isoformat(),
        "command": " ".join([f"python experiments/benchmarks/{Path(script).name}", *arguments]),
        "environment": environment(),
    }


def measured_on_shared_cpu(date: str, env: Mapping[str, Any]) -> str:
    """The start of a report's first line for a run on this (shared) machine's CPUs."""
    return f"Measured {date} on {env['cpu']} ({env['cpus']} CPUs, shared with other work), torch {env['torch']}"


def report(measured: str, command: str, rows: Iterable[str], note: str) -> str:
    """A benchmark's README text: where it was measured, the command in a code block, the table rows, a note."""
    return "\n".join([measured, "", "```", command, "```", "", *rows, "", note])


# ------------------------------------------------------------------------------------------------------- timing


def timed(
    step: Callable[[], object], steps: int, tokens_per_step: int, synchronize: Callable[[], None] = lambda: None
) -> tuple[float, float]:
    """Tokens per second over ``steps`` calls of ``step``, and the share of the threads' wall time this process ran.

    ``synchronize`` waits for the device before and after (a GPU's queued work). The share falls below about 1
    when other processes take the CPU; interleaving the models' blocks lets them share that.
    """
    synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return steps * tokens_per_step / wall, cpu / (wall * torch.get_num_threads())


def repeat_rounds(
    one_round: Callable[[], R],
    *,
    rounds: int,
    counts: Callable[[R], bool] = lambda _: True,
    max_seconds: float = math.inf,
) -> list[R]:
    """Every result of ``one_round()``, called until ``rounds`` of them ``counts`` (all do, unless told) or
    ``max_seconds`` passed."""
    records: list[R] = []
    counted = 0
    deadline = time.perf_counter() + max_seconds
    while counted < rounds and time.perf_counter() < deadline:
        records.append(one_round())
        counted += bool(counts(records[-1]))
    return records


# ------------------------------------------------------------------------------------------------------- memory


def live_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors alive between steps: parameters and optimizer state (each storage once)."""
    tensors = list(model.parameters()) + [
        t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)
    ]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def profiled_peak_bytes(step: Callable[[], object]) -> int:
    """The peak of the bytes allocated during one call of ``step`` above those at its start, from
    ``torch.profiler``'s allocation records (the CPU counterpart of ``torch.cuda.max_memory_allocated``: exact,
    and blind to allocator caching)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    records = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
    )
    current = peak = 0
    for _, nbytes in records:
        current += nbytes
        peak = max(peak, current)
    return peak


def rss_kib() -> int:
    """This process's resident memory now, in KiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def peak_rss_kib() -> int:
    """This process's peak resident memory so far, in KiB (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def fresh_processes(command: Callable[[str], list[str]], names: Iterable[str], repeats: int) -> dict[str, list[dict]]:
    """Each name's measurement run ``repeats`` times, each in a fresh process (``command(name)``), the names
    alternating; a run's result is the JSON object on the last line it prints."""
    names = tuple(names)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            out = subprocess.run(command(name), check=True, capture_output=True, text=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    return runs


def publish(benchmark: str, table: str, result: dict, out: Path, *, readme: bool, heading: str) -> None:
    """Print ``table``, write ``result`` as JSON to ``out`` and, with ``readme``, the table into ``benchmark``'s
    part of experiments/README.md (see :func:`write_readme`)."""
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if readme:
        write_readme(benchmark, table, heading)


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
