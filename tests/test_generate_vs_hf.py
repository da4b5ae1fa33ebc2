"""experiments/benchmarks/generate_vs_hf.py at its tiny size and one round, eager paths only, so that the benchmark
(its weight copy, its same-tokens check and its table) cannot rot unnoticed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"))

import generate_vs_hf as bench  # noqa: E402 (the benchmarks folder is not a package)

from tfgraph.decoding import choose_linear, cpu  # noqa: E402


@pytest.mark.slow  # some 5 s idle (eight generations of 128 tokens), far more on a shared machine
def test_the_benchmark_checks_times_and_reports_gpt2_tiny():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        hf = bench.build_hf("gpt2_tiny")
        ours = bench.build_tfgraph("gpt2_tiny", hf)
        names = ["hf", "tfgraph", "pytorch"] + (["onednn"] if cpu.onednn_available() else [])
        gens = bench.generators(hf, ours, names)
        check = bench.checks(hf, ours, gens)  # tfgraph's logits and every generator's tokens are Hugging Face's
        choice = choose_linear(ours, rows=bench.BATCH)
        part = {
            "names": names,
            "check": check,
            "choice": {"kernel": choice.kernel, "reason": choice.reason, "step_ms": choice.step_ms},
            "repeat": 1,
            "throughput": bench.throughput(gens, names, rounds=1, max_other=1.0),
        }
    finally:
        torch.set_num_threads(threads)
    assert check["identical_tokens"] and check["max_abs_logit_diff"] <= bench.LOGIT_ATOL
    result = {
        "date": "today",
        "command": "python experiments/benchmarks/generate_vs_hf.py",
        "environment": {**bench.environment()},
        "run": {"names": names, "max_other_cpu": 0.05},
        "sizes": {"gpt2_tiny": part},
        "median_load": 0.0,
    }
    table = bench.markdown(result)
    assert f"`cpu_linear=auto` chose **{choice.kernel}**" in table
    assert table.count("\n| ") == len(names) + 2  # the header, its rule and a row per generator
