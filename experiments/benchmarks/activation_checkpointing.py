"""Peak training memory with and without ``model.activation_checkpointing`` for a long-context model on the CPU.

The model: tfgraph's ``gpt2`` at d_model 256, 8 layers, 4 heads, d_ff 1024, vocab 8192, T=2048, B=2, fp32, no
dropout. A training step is AdamW, forward, cross-entropy, backward, step, ``zero_grad(set_to_none=True)``.

Each setting runs in a fresh subprocess (the same imports and weights), alternating, and reports:

- peak allocated: ``torch.profiler`` with ``profile_memory`` over one step (Adam state already present) records every
  allocation and free; the running sum's peak plus the bytes alive between steps (parameters, Adam state). Exact, and
  blind to allocator caching (the CPU counterpart of ``torch.cuda.max_memory_allocated``).
- peak RSS growth: ``ru_maxrss`` minus the RSS once the model and optimizer are built.
- seconds per step: the median of ``--steps`` timed steps after one warm-up (the machine may be shared).

Both settings must compute the same loss to 1e-6 (checked in the parent). Usage::

    python experiments/benchmarks/activation_checkpointing.py [--repeats 2] [--steps 3] [--write-readme]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import common
import torch
import torch.nn.functional as F

import tfgraph

HERE = Path(__file__).resolve().parent
RESULT_PATH = HERE / "results" / "activation_checkpointing.json"
README_HEADING = "## Activation checkpointing: peak training memory at T=2048 (CPU)"
SIZES = dict(d_model=256, n_layers=8, n_heads=4, d_ff=1024, vocab_size=8192, max_len=2048)
BATCH, SEQ_LEN, THREADS, SEED = 2, 2048, 2, 0
SETTINGS = ("off", "on")


def overrides(setting: str, sizes: dict) -> list[str]:
    flag = "true" if setting == "on" else "false"
    return common.gpt2_overrides(sizes, f"model.activation_checkpointing={flag}")


def child(setting: str, steps: int, sizes: dict, batch: int, seq_len: int) -> dict:
    """One setting in this (fresh) process: build, train, measure."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    model = tfgraph.build_model(tfgraph.compose(overrides(setting, sizes)).model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    tokens = torch.randint(0, sizes["vocab_size"], (batch, seq_len + 1), generator=torch.Generator().manual_seed(SEED))
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step() -> float:
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    baseline_kib = common.rss_kib()
    first_loss = step()  # Adam state exists from here on
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak_kib = common.peak_rss_kib()
    in_step = common.profiled_peak_bytes(step)
    live = common.live_bytes(model, optimizer)
    return {
        "first_loss": first_loss,
        "seconds_per_step": statistics.median(times),
        "rss_growth_kib": peak_kib - baseline_kib,
        "peak_allocated_bytes": live + in_step,
        "in_step_bytes": in_step,
    }


def measure(repeats: int, steps: int, tiny: bool) -> dict:
    runs = common.fresh_processes(
        lambda setting: [sys.executable, __file__, "--child", setting, "--steps", str(steps)] + (["--tiny"] * tiny),
        SETTINGS,
        repeats,
    )
    losses = [r["first_loss"] for rs in runs.values() for r in rs]
    assert max(losses) - min(losses) <= 1e-6 * max(1.0, abs(losses[0])), f"the settings' losses differ: {losses}"
    keys = ("peak_allocated_bytes", "in_step_bytes", "rss_growth_kib", "seconds_per_step")
    medians = {s: {k: statistics.median(r[k] for r in runs[s]) for k in keys} for s in SETTINGS}
    return {"runs": runs, "median": medians}


def markdown(result: dict) -> str:
    med, env = result["median"], result["environment"]
    mib = 1024**2
    rows = [
        "| activation checkpointing | peak allocated (MiB) | of which in-step (MiB) | peak RSS growth (MiB) | s / step |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for s in SETTINGS:
        m = med[s]
        rows.append(
            f"| {s} | {m['peak_allocated_bytes'] / mib:.0f} | {m['in_step_bytes'] / mib:.0f} "
            f"| {m['rss_growth_kib'] / 1024:.0f} | {m['seconds_per_step']:.2f} |"
        )
    on, off = med["on"], med["off"]
    rows.append(
        f"| **on / off** | **{on['peak_allocated_bytes'] / off['peak_allocated_bytes']:.2f}** "
        f"| {on['in_step_bytes'] / off['in_step_bytes']:.2f} | {on['rss_growth_kib'] / off['rss_growth_kib']:.2f} "
        f"| {on['seconds_per_step'] / off['seconds_per_step']:.2f} |"
    )
    cfg = result["config"]
    return common.report(
        f"{common.measured_on_shared_cpu(result['date'], env)}, {THREADS} threads.",
        result["command"],
        rows,
        f"tfgraph `gpt2` at {', '.join(f'{k} {v}' for k, v in cfg['sizes'].items())}; B={cfg['batch']}, "
        f"T={cfg['seq_len']}, fp32, AdamW. Each setting in a fresh process, median of {result['repeats']} "
        "processes each; both compute the same loss. Peak allocated: the profiler's allocation records over one "
        "step plus the parameters and AdamW state; in-step: the peak above those (the activations kept for "
        "backward, and the recomputed layer's). Peak RSS growth: `ru_maxrss` above the RSS after building.",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per setting (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process (default 3)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and context (to test the script)")
    parser.add_argument("--write-readme", action="store_true", help="put the table into experiments/README.md")
    parser.add_argument("--out", type=Path, default=RESULT_PATH, help="where the JSON result goes")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes, batch, seq_len = SIZES, BATCH, SEQ_LEN
    if args.tiny:
        sizes, batch, seq_len = (
            dict(SIZES, d_model=32, n_layers=2, n_heads=2, d_ff=64, vocab_size=64, max_len=64),
            2,
            64,
        )
    if args.child:
        print(json.dumps(child(args.child, args.steps, sizes, batch, seq_len)))
        return
    result = {
        **common.run_record(__file__),
        "config": {"sizes": sizes, "batch": batch, "seq_len": seq_len},
        "repeats": args.repeats,
        **measure(args.repeats, args.steps, args.tiny),
    }
    common.publish(
        "activation_checkpointing",
        markdown(result),
        result,
        args.out,
        readme=args.write_readme and not args.tiny,
        heading=README_HEADING,
    )


if __name__ == "__main__":
    main()
