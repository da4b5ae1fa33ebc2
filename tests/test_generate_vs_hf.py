"""experiments/benchmarks/generate_vs_hf.py at its tiny size and one round, eager paths only, so that the benchmark
(its weight copy, its same-tokens check and its table) cannot rot unnoticed; the order its generators run in, and
how it calls the machine."""

from __future__ import annotations

import sys
from collections import Counter
from itertools import pairwise
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
            "choice": bench.choice_record(choice),
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
    assert f"`cpu_linear=auto` chose **{choice.kernel}** on the first generation" in table
    assert table.count("\n| ") == len(names) + 2  # the header, its rule and a row per generator
    assert [r["order"] for r in part["throughput"]["rounds"]] == [[names[i] for i in bench.run_orders(len(names))[0]]]
    assert "`gpt2_tiny` 1 (0 cycles of" in table and "(positions not balanced)" in table


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_each_generator_takes_each_place_and_follows_each_other_equally_often(n):
    orders = bench.run_orders(n)
    assert len(orders) == (n if n % 2 == 0 else 2 * n) and all(sorted(order) == list(range(n)) for order in orders)
    places = Counter((g, place) for order in orders for place, g in enumerate(order))
    follows = Counter(pair for order in orders for pair in pairwise(order))
    assert len(places) == n * n and len(set(places.values())) == 1
    assert len(follows) == n * (n - 1) and len(set(follows.values())) == 1  # every ordered pair, equally often


def fake_result(other_cpu: list[list[float]], max_other: float = 0.05) -> dict:
    """A result whose rounds' calls saw ``other_cpu`` (a list per round)."""
    rounds = [
        {"calls": {f"g{i}": {"other_cpu": o} for i, o in enumerate(r)}, "clean": max(r) <= max_other} for r in other_cpu
    ]
    return {"sizes": {"gpt2_tiny": {"throughput": {"rounds": rounds, "orders_per_cycle": 2}}}}


def test_the_machine_is_called_idle_only_when_every_round_was_uncontended():
    assert bench.machine_state(fake_result([[0.0, 0.01], [0.03, 0.0]])).startswith(
        "**idle**: other processes used at most 3%"
    )
    shared = bench.machine_state(fake_result([[0.0, 0.01], [0.4, 0.0]]))
    assert shared.startswith("**shared**") and "at most 40%" in shared and "1 of 2 rounds contended" in shared
    assert bench.cycles({"rounds": [{}] * 4, "orders_per_cycle": 2}) == "2 cycles of 2 orders"
