"""Training-step throughput and peak memory of tfgraph's ``gpt2`` against a hand-written nanoGPT-style model.

Both models have the same architecture (d_model 256, 4 layers, 4 heads, d_ff 1024, vocab 8192, T=256, B=8, fp32,
no dropout) and start from the same weights: the tfgraph model's are copied into the hand-written one, and the
logits must agree before anything is timed. A training step is AdamW (lr 3e-4, PyTorch's defaults otherwise, the
same for both), forward, cross-entropy over the vocabulary, backward, step, ``zero_grad(set_to_none=True)`` on one
fixed random batch.

Throughput: both models warm up, then run interleaved in rounds of ``--steps`` steps each (tfgraph, hand-written,
tfgraph, hand-written, ...); every block of steps gives one tokens/s figure and the share of the CPU it got. The
machine may be shared, so rounds run until ``--rounds`` of them were uncontended (both blocks got at least
``--min-cpu-share`` of their threads' wall time) or ``--max-seconds`` passed. Reported, for the uncontended rounds
and for all: the median per model, the ratio of the medians and the median (and mean) of the per-round ratios.

Peak memory, two ways:

- allocated: ``torch.profiler`` with ``profile_memory`` over one training step (Adam state already present) records
  every tensor allocation and free; the running sum gives the peak of bytes allocated during the step, to which the
  bytes live at its start (parameters and optimizer state) are added. This is the CPU counterpart of
  ``torch.cuda.max_memory_allocated``: exact, and blind to allocator caching and fragmentation.
- RSS: each model trains a few steps in a fresh subprocess with identical imports; peak RSS (``ru_maxrss``) minus
  the RSS once model and optimizer are built. This includes what the allocator keeps, and is noisier.

Usage::

    python experiments/benchmarks/train_throughput.py [--rounds N] [--steps K] [--write-readme]
    python experiments/benchmarks/train_throughput.py --profile 20   # per-op CPU time of both models

Prints a markdown table and writes ``results/train_throughput.json`` next to this file; ``--write-readme`` puts the
table into its section of ``experiments/README.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import common
import torch
import torch.nn.functional as F
from nanogpt import GPT, copy_from_tfgraph
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

import tfgraph

HERE = Path(__file__).resolve().parent
RESULT_PATH = HERE / "results" / "train_throughput.json"
README_HEADING = "## Training-step throughput: tfgraph gpt2 vs a hand-written nanoGPT"

SIZES = dict(d_model=256, n_layers=4, n_heads=4, d_ff=1024, vocab_size=8192, max_len=256)
BATCH, SEQ_LEN = 8, 256
THREADS = 2
LR = 3e-4
SEED = 0
ATOL = 1e-5
NAMES = ("tfgraph", "nanogpt")
LABELS = {"tfgraph": "tfgraph `gpt2`", "nanogpt": "hand-written nanoGPT"}


def tfgraph_overrides() -> list[str]:
    """The Hydra overrides of the benchmarked tfgraph model."""
    return common.gpt2_overrides(SIZES, "model.dropout=0.0")


def build_tfgraph() -> nn.Module:
    torch.manual_seed(SEED)
    return tfgraph.build_model(tfgraph.compose(tfgraph_overrides()).model)


def build_nanogpt() -> GPT:
    torch.manual_seed(SEED)
    return GPT(**SIZES)


def batch() -> tuple[Tensor, Tensor]:
    """The fixed random batch: inputs and next-token targets, each [B, T]."""
    tokens = torch.randint(0, SIZES["vocab_size"], (BATCH, SEQ_LEN + 1), generator=torch.Generator().manual_seed(SEED))
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def train_step_fn(model: nn.Module) -> Callable[[], Tensor]:
    """One training step of ``model`` on the fixed batch, as a closure that returns the loss."""
    x, y = batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()

    def step() -> Tensor:
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    step.optimizer = optimizer  # for the memory accounting
    return step


def paired_models() -> tuple[nn.Module, GPT, dict]:
    """Both models with the same weights, checked to have the same parameters and the same logits."""
    graph, hand = build_tfgraph(), build_nanogpt()
    n_graph = sum(p.numel() for p in graph.parameters())
    n_hand = sum(p.numel() for p in hand.parameters())
    assert n_graph == n_hand, f"parameter counts differ: tfgraph {n_graph}, hand-written {n_hand}"
    copy_from_tfgraph(hand, graph)
    x, _ = batch()
    with torch.no_grad():
        diff = (graph(x) - hand(x)).abs().max().item()
    assert diff <= ATOL, f"logits differ by {diff} > {ATOL}"
    return graph, hand, {"parameters": n_graph, "max_abs_logit_diff": diff}


# ----------------------------------------------------------------------------------------------------- throughput


def throughput(
    steps_by_name: dict[str, Callable[[], Tensor]],
    *,
    rounds: int,
    steps: int,
    warmup: int,
    min_cpu_share: float,
    max_seconds: float,
) -> dict:
    """Warm up, then alternate the models block by block until ``rounds`` rounds ran uncontended.

    A round is uncontended when both of its blocks had at least ``min_cpu_share`` of their threads' wall time:
    on a shared machine a block that another process slowed down says nothing about the model. The loop also
    stops after ``max_seconds``. Returns every round, and the summaries of the uncontended ones and of all.
    """
    tokens_per_step = BATCH * SEQ_LEN
    for step in steps_by_name.values():
        common.timed(step, warmup, tokens_per_step)
    numbers = itertools.count(1)

    def one_round() -> dict:
        blocks = {name: common.timed(step, steps, tokens_per_step) for name, step in steps_by_name.items()}
        record = {
            "tokens_per_s": {name: tps for name, (tps, _) in blocks.items()},
            "cpu_share": {name: share for name, (_, share) in blocks.items()},
            "clean": all(share >= min_cpu_share for _, share in blocks.values()),
            "load_average_1min": os.getloadavg()[0],
        }
        print(
            f"round {next(numbers)}: "
            + ", ".join(f"{n} {tps:,.0f} tok/s ({share:.0%} CPU)" for n, (tps, share) in blocks.items())
            + ("" if record["clean"] else "  [contended]"),
            file=sys.stderr,
            flush=True,
        )
        return record

    records = common.repeat_rounds(one_round, rounds=rounds, counts=lambda r: r["clean"], max_seconds=max_seconds)
    return {
        "rounds": records,
        "uncontended": summary([r for r in records if r["clean"]]),
        "all": summary(records),
    }


def summary(records: list[dict]) -> dict | None:
    """Median tokens/s per model, the ratio of the medians and the median of the per-round ratios."""
    if not records:
        return None
    per_model = {name: [r["tokens_per_s"][name] for r in records] for name in NAMES}
    medians = {name: statistics.median(v) for name, v in per_model.items()}
    ratios = [a / b for a, b in zip(per_model["tfgraph"], per_model["nanogpt"], strict=True)]
    return {
        "n_rounds": len(records),
        "median_tokens_per_s": medians,
        "ratio_of_medians": medians["tfgraph"] / medians["nanogpt"],
        "median_of_ratios": statistics.median(ratios),
        "min_max_ratio": [min(ratios), max(ratios)],
        "mean_of_ratios": statistics.fmean(ratios),
        # normal approximation; the rounds are paired, so the spread of the machine is shared by both models
        "mean_of_ratios_ci95": 1.96 * statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else None,
    }


# --------------------------------------------------------------------------------------------------------- memory


def profiled_peak(model: nn.Module, step: Callable[[], Tensor]) -> dict:
    """Peak bytes allocated during one step (Adam state present), from the profiler's allocation records."""
    step(), step()  # Adam state exists, grads are None again
    peak = common.profiled_peak_bytes(step)
    base = common.live_bytes(model, step.optimizer)
    return {"live_bytes_between_steps": base, "peak_step_bytes": peak, "peak_total_bytes": base + peak}


def rss_child(name: str, steps: int) -> None:
    """Run in a fresh process: build one model and its optimizer, train ``steps`` steps, print peak RSS growth."""
    torch.set_num_threads(THREADS)
    model = build_tfgraph() if name == "tfgraph" else build_nanogpt()
    step = train_step_fn(model)
    baseline_kib = common.rss_kib()
    for _ in range(steps):
        step()
    peak_kib = common.peak_rss_kib()
    print(json.dumps({"baseline_kib": baseline_kib, "peak_kib": peak_kib, "delta_kib": peak_kib - baseline_kib}))


def rss_peaks(repeats: int, steps: int) -> dict:
    """Peak RSS growth per model, each run in its own subprocess, alternating; medians over ``repeats``."""
    runs = common.fresh_processes(
        lambda name: [sys.executable, __file__, "--rss-child", name, "--steps", str(steps)], NAMES, repeats
    )
    medians = {name: statistics.median(r["delta_kib"] for r in runs[name]) for name in NAMES}
    return {"runs": runs, "median_delta_kib": medians, "ratio": medians["tfgraph"] / medians["nanogpt"]}


# -------------------------------------------------------------------------------------------------------- profile


def op_profile(steps_by_name: dict[str, Callable[[], Tensor]], steps: int) -> None:
    """Print each op's self CPU time per step for both models, largest differences first."""
    tables = {}
    for name, step in steps_by_name.items():
        step(), step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        tables[name] = {e.key: (e.self_cpu_time_total / steps, e.count / steps) for e in prof.key_averages()}
        total = sum(t for t, _ in tables[name].values())
        calls = sum(c for _, c in tables[name].values())
        print(f"{name}: {total / 1e3:.1f} ms self CPU per step in {calls:.0f} op calls")
    keys = set(tables["tfgraph"]) | set(tables["nanogpt"])
    rows = []
    for key in keys:
        (ta, ca), (tb, cb) = tables["tfgraph"].get(key, (0.0, 0.0)), tables["nanogpt"].get(key, (0.0, 0.0))
        rows.append((ta - tb, key, ta, tb, ca, cb))
    rows.sort(key=lambda r: -abs(r[0]))
    print("| op | tfgraph us/step | nanoGPT us/step | diff us/step | tfgraph calls/step | nanoGPT calls/step |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for diff, key, ta, tb, ca, cb in rows[:40]:
        print(f"| `{key}` | {ta:,.0f} | {tb:,.0f} | {diff:+,.0f} | {ca:.0f} | {cb:.0f} |")


# --------------------------------------------------------------------------------------------------------- report


def markdown(result: dict) -> str:
    tp, mem, rss = result["throughput"], result["memory_allocated"], result["memory_rss"]
    clean, every = tp["uncontended"] or tp["all"], tp["all"]
    mib = 1024**2
    rows = [
        "| model | median tokens/s, uncontended rounds | median tokens/s, all rounds | peak allocated (MiB) "
        "| of which in-step (MiB) | peak RSS growth (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in NAMES:
        rows.append(
            f"| {LABELS[name]} | {clean['median_tokens_per_s'][name]:,.0f} | {every['median_tokens_per_s'][name]:,.0f} "
            f"| {mem[name]['peak_total_bytes'] / mib:.1f} | {mem[name]['peak_step_bytes'] / mib:.1f} "
            f"| {rss['median_delta_kib'][name] / 1024:.1f} |"
        )
    ratio_alloc = mem["tfgraph"]["peak_total_bytes"] / mem["nanogpt"]["peak_total_bytes"]
    ratio_step = mem["tfgraph"]["peak_step_bytes"] / mem["nanogpt"]["peak_step_bytes"]

    def ratio_cell(s: dict) -> str:
        low, high = s["min_max_ratio"]
        return f"{s['ratio_of_medians']:.3f} (median of per-round ratios {s['median_of_ratios']:.3f}, range {low:.2f}-{high:.2f})"

    rows.append(
        f"| **tfgraph / hand-written** | **{ratio_cell(clean)}** | {ratio_cell(every)} "
        f"| **{ratio_alloc:.3f}** | {ratio_step:.3f} | {rss['ratio']:.3f} |"
    )
    env, run = result["environment"], result["run"]
    slowest = min(r["tokens_per_s"][n] / clean["median_tokens_per_s"][n] for r in tp["rounds"] for n in NAMES)
    measured = (
        f"{common.measured_on_shared_cpu(result['date'], env)}, {env['threads']} threads, Python {env['python']}."
    )
    note = (
        f"Rounds of {run['steps']} training steps per model (tfgraph, then hand-written) after {run['warmup']} warm-up "
        f"steps each; B={BATCH}, T={SEQ_LEN} ({BATCH * SEQ_LEN} tokens per step). {every['n_rounds']} rounds ran, "
        f"{tp['uncontended']['n_rounds'] if tp['uncontended'] else 0} of them uncontended: both blocks of the round "
        f"got at least {run['min_cpu_share']:.0%} of their {env['threads']} threads' wall time as process CPU time "
        f"(in the others a block ran as slowly as {slowest:.0%} of its model's uncontended median). "
        f"Mean of the uncontended per-round ratios: {clean['mean_of_ratios']:.3f} +- {clean['mean_of_ratios_ci95'] or 0:.3f} "
        f"(95% interval). Both models have "
        f"{result['check']['parameters']:,} parameters and start from the same weights (largest logit difference "
        f"{result['check']['max_abs_logit_diff']:.1e}). Peak allocated: the profiler's allocation records over one "
        f"step plus the parameters and AdamW state alive between steps; in-step: the allocation peak above those. "
        f"Peak RSS growth: `ru_maxrss` minus the RSS after model and optimizer are built, each model in a fresh "
        f"process for {run['rss_steps']} steps, median of {run['rss_repeats']}."
    )
    return common.report(measured, result["command"], rows, note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="uncontended interleaved rounds to collect (default 30)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per model per round (default 2)")
    parser.add_argument("--min-cpu-share", type=float, default=0.97, help="CPU share of an uncontended block")
    parser.add_argument(
        "--max-seconds", type=float, default=300, help="stop collecting rounds after this long (default 300)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps per model (default 3)")
    parser.add_argument("--rss-repeats", type=int, default=2, help="fresh processes per model for peak RSS")
    parser.add_argument("--rss-steps", type=int, default=3, help="training steps in each RSS process")
    parser.add_argument("--profile", type=int, metavar="STEPS", help="only print a per-op profile over STEPS steps")
    parser.add_argument("--write-readme", action="store_true", help="put the table into experiments/README.md")
    parser.add_argument("--rss-child", choices=NAMES, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.rss_child:
        rss_child(args.rss_child, args.steps)
        return
    torch.set_num_threads(THREADS)
    graph, hand, check = paired_models()
    steps_by_name = {"tfgraph": train_step_fn(graph), "nanogpt": train_step_fn(hand)}
    if args.profile:
        op_profile(steps_by_name, args.profile)
        return

    start = time.time()
    result = {
        **common.run_record(__file__),
        "config": {"sizes": SIZES, "batch": BATCH, "seq_len": SEQ_LEN, "dtype": "float32", "lr": LR},
        "tfgraph_overrides": tfgraph_overrides(),
        "run": {
            "rounds": args.rounds,
            "steps": args.steps,
            "warmup": args.warmup,
            "min_cpu_share": args.min_cpu_share,
            "max_seconds": args.max_seconds,
            "rss_repeats": args.rss_repeats,
            "rss_steps": args.rss_steps,
        },
        "check": check,
        "throughput": throughput(
            steps_by_name,
            rounds=args.rounds,
            steps=args.steps,
            warmup=args.warmup,
            min_cpu_share=args.min_cpu_share,
            max_seconds=args.max_seconds,
        ),
    }
    model_of = {"tfgraph": graph, "nanogpt": hand}
    result["memory_allocated"] = {name: profiled_peak(model_of[name], steps_by_name[name]) for name in NAMES}
    result["memory_rss"] = rss_peaks(args.rss_repeats, args.rss_steps)
    result["seconds"] = time.time() - start

    common.publish(
        "train_throughput", markdown(result), result, RESULT_PATH, readme=args.write_readme, heading=README_HEADING
    )


if __name__ == "__main__":
    main()
