"""Greedy generation throughput of tfgraph's ``gpt2`` against Hugging Face transformers' GPT-2 with the same weights.

Hugging Face's ``GPT2LMHeadModel(GPT2Config())`` (GPT-2 small, 124M parameters, random init, no dropout, no download)
and tfgraph's ``model=gpt2 model.dropout=0.0`` get the same weights: HF's are copied into tfgraph (HF's ``Conv1D``
stores ``[in, out]``, tfgraph's ``nn.Linear`` ``[out, in]``; ``c_attn`` is the same fused ``q | k | v``). The logits
must agree to 1e-4 and the greedy tokens must be identical before anything is timed.

Task: 128 new tokens from one 32-token prompt, batch 1, greedy, fp32, ``torch.set_num_threads(2)``; tokens/s counts
the 128 new tokens over the wall time of the whole call (prefill included). Timed:

- Hugging Face: ``model.generate(use_cache=True, do_sample=False)`` (its default SDPA attention);
- tfgraph: ``tfgraph.decoding.generate(model, prompt, max_new_tokens=128)`` with the KV cache, as it runs by default
  (a float32 CPU model's linear layers on oneDNN's multi-threaded kernel, see ``tfgraph/decoding/cpu.py``), and with
  PyTorch's default linear kernel (``fast_cpu_linear=False``);
- tfgraph without the cache (``use_cache=False``: every step re-runs the whole sequence), in fewer rounds.

The generators run interleaved, one call each per round, in one process. The machine may be shared, so every call
also records its process CPU time and the CPU time the rest of the machine used meanwhile (``/proc/stat``); a round
is uncontended when, in all of its calls, other processes used less than ``--max-other-cpu`` of the machine. Rounds
run until ``--rounds`` were uncontended or ``--max-seconds`` passed. Reported: the median tokens/s per generator over
the uncontended rounds and over all, and the median of the per-round ratios.

Usage::

    python experiments/benchmarks/generate_vs_hf.py [--rounds N] [--write-readme]
    python experiments/benchmarks/generate_vs_hf.py --profile   # per-op CPU time of one generation each

Prints a markdown table and writes ``results/generate_vs_hf.json`` next to this file; ``--write-readme`` puts the
table into its section of ``experiments/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import common
import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

import tfgraph
from tfgraph.decoding import generate

HERE = Path(__file__).resolve().parent
RESULT_PATH = HERE / "results" / "generate_vs_hf.json"
README_HEADING = "## Generation throughput: tfgraph gpt2 vs Hugging Face GPT-2, with and without the KV cache"

PROMPT_LEN, NEW_TOKENS, BATCH = 32, 128, 1
THREADS = 2
SEED = 0
LOGIT_ATOL = 1e-4
OVERRIDES = ["model=gpt2", "model.dropout=0.0"]
LABELS = {
    "hf": "Hugging Face `generate(use_cache=True)`",
    "tfgraph": "tfgraph `generate` (KV cache; default: linear layers on oneDNN)",
    "tfgraph_pytorch_linear": "tfgraph `generate(fast_cpu_linear=False)` (KV cache; PyTorch's linear kernel)",
    "tfgraph_no_cache": "tfgraph `generate(use_cache=False)`",
}
RATIO_LABELS = {"tfgraph": "tfgraph (default)", "tfgraph_pytorch_linear": "tfgraph (PyTorch's linear kernel)"}


# ------------------------------------------------------------------------------------------------------- models


def build_hf() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(SEED)
    config = GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).eval()


def hf_name(name: str) -> str:
    """The Hugging Face GPT-2 parameter a tfgraph ``gpt2`` parameter holds."""
    fixed = {
        "embedding.weight": "transformer.wte.weight",
        "head.weight": "lm_head.weight",
        "decoder.position.table.weight": "transformer.wpe.weight",
        "decoder.final_norm.weight": "transformer.ln_f.weight",
        "decoder.final_norm.bias": "transformer.ln_f.bias",
    }
    if name in fixed:
        return fixed[name]
    _, _, layer, node, *rest = name.split(".")  # decoder.layers.<i>.<node>[.<sub>].<weight|bias>
    parts = {"norm1": "ln_1", "norm2": "ln_2", "attn": "attn", "ffn": "mlp"}
    sub = {"qkv": "c_attn", "out": "c_proj", "fc": "c_fc", "proj": "c_proj"}
    return ".".join(["transformer.h", layer, parts[node], *(sub.get(p, p) for p in rest)])


def copy_from_hf(ours: nn.Module, hf: nn.Module) -> None:
    """Copy Hugging Face GPT-2 weights into tfgraph's ``gpt2``; ``Conv1D`` weights ``[in, out]`` are transposed."""
    theirs = hf.state_dict()
    with torch.no_grad():
        for name, param in ours.named_parameters():  # tied weights appear once
            source = theirs[hf_name(name)]
            if param.dim() == 2 and name.startswith("decoder.layers."):
                source = source.t()
            param.copy_(source)


def build_tfgraph(hf: nn.Module) -> nn.Module:
    model = tfgraph.build_model(tfgraph.compose(OVERRIDES).model).eval()
    copy_from_hf(model, hf)
    return model


def prompt() -> Tensor:
    return torch.randint(0, 50257, (BATCH, PROMPT_LEN), generator=torch.Generator().manual_seed(SEED))


def generators(hf: nn.Module, ours: nn.Module) -> dict[str, Callable[[], Tensor]]:
    """Each generator as a closure returning the new tokens [1, 128]."""
    from transformers import GenerationConfig

    ids = prompt()
    mask = torch.ones_like(ids)
    config = GenerationConfig(
        max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0
    )

    @torch.no_grad()
    def run_hf() -> Tensor:
        return hf.generate(ids, attention_mask=mask, generation_config=config)[:, PROMPT_LEN:]

    return {
        "hf": run_hf,
        "tfgraph": lambda: generate(ours, ids, max_new_tokens=NEW_TOKENS).sequences,
        "tfgraph_pytorch_linear": lambda: (
            generate(ours, ids, max_new_tokens=NEW_TOKENS, fast_cpu_linear=False).sequences
        ),
        "tfgraph_no_cache": lambda: generate(ours, ids, max_new_tokens=NEW_TOKENS, use_cache=False).sequences,
    }


def checks(hf: nn.Module, models: dict[str, nn.Module], gens: dict[str, Callable[[], Tensor]]) -> dict:
    """Same logits (to 1e-4) and identical greedy tokens for every generator."""
    ids = prompt()
    with torch.no_grad():
        reference = hf(ids).logits
        diffs = {name: (model(ids) - reference).abs().max().item() for name, model in models.items()}
    for name, diff in diffs.items():
        assert diff <= LOGIT_ATOL, f"{name}: logits differ from Hugging Face's by {diff} > {LOGIT_ATOL}"
    tokens = {name: gen() for name, gen in gens.items()}
    for name, t in tokens.items():
        assert t.shape == (BATCH, NEW_TOKENS), (name, t.shape)
        assert torch.equal(t, tokens["hf"]), f"{name} generated other tokens than Hugging Face"
    return {
        "max_abs_logit_diff": diffs,
        "identical_tokens": True,
        "parameters": sum(p.numel() for p in hf.parameters()),
        "first_tokens": tokens["hf"][0, :8].tolist(),
    }


# ---------------------------------------------------------------------------------------------------- throughput


def machine_busy() -> float | None:
    """CPU seconds all processes have used (``/proc/stat``), or ``None`` where that is not available."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def timed(gen: Callable[[], Tensor]) -> dict:
    """One call: tokens/s, this process's CPU share of its threads, the rest of the machine's share of all CPUs."""
    busy, wall, cpu = machine_busy(), time.perf_counter(), time.process_time()
    gen()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = machine_busy()
    other = None if busy is None else max(0.0, (after - busy) - cpu) / (wall * os.cpu_count())
    return {"tokens_per_s": NEW_TOKENS * BATCH / wall, "cpu_share": cpu / (wall * THREADS), "other_cpu": other}


def throughput(
    gens: dict[str, Callable[[], Tensor]], names: list[str], *, rounds: int, max_other: float, max_seconds: float
) -> dict:
    """Warm up, then call the generators in turn, round after round, until ``rounds`` rounds ran uncontended."""
    for name in names:
        gens[name]()
    records = []
    deadline = time.perf_counter() + max_seconds
    while sum(r["clean"] for r in records) < rounds and time.perf_counter() < deadline:
        calls = {name: timed(gens[name]) for name in names}
        clean = all(c["other_cpu"] is None or c["other_cpu"] <= max_other for c in calls.values())
        records.append({"calls": calls, "clean": clean, "load_average_1min": os.getloadavg()[0]})
        print(
            f"round {len(records)}: "
            + ", ".join(
                f"{n} {c['tokens_per_s']:.1f} tok/s (own CPU {c['cpu_share']:.0%}, others {c['other_cpu'] or 0:.0%})"
                for n, c in calls.items()
            )
            + ("" if clean else "  [contended]"),
            file=sys.stderr,
            flush=True,
        )
    return {
        "rounds": records,
        "uncontended": summary([r for r in records if r["clean"]], names),
        "all": summary(records, names),
    }


def summary(records: list[dict], names: list[str]) -> dict | None:
    """Median tokens/s per generator, and per-round ratios of each generator to the first one named."""
    if not records:
        return None
    per = {n: [r["calls"][n]["tokens_per_s"] for r in records] for n in names}
    base = names[0]
    ratios = {n: [a / b for a, b in zip(per[n], per[base], strict=True)] for n in names[1:]}
    return {
        "n_rounds": len(records),
        "median_tokens_per_s": {n: statistics.median(v) for n, v in per.items()},
        "median_of_ratios": {n: statistics.median(v) for n, v in ratios.items()},
        "min_max_ratio": {n: [min(v), max(v)] for n, v in ratios.items()},
    }


# --------------------------------------------------------------------------------------------------------- profile


def op_profile(gens: dict[str, Callable[[], Tensor]], names: list[str]) -> None:
    """Print the 25 ops with the most self CPU time in one generation of each generator."""
    for name in names:
        gens[name]()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            gens[name]()
        print(f"\n### {name}\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


# ---------------------------------------------------------------------------------------------------------- report


def markdown(result: dict) -> str:
    main, nocache = result["throughput"], result["throughput_no_cache"]
    clean, every = main["uncontended"] or main["all"], main["all"]
    ratio_name = "tfgraph"

    def cell(s: dict, name: str) -> str:
        return f"{s['median_tokens_per_s'][name]:.1f}"

    rows = [
        "| generator | median tokens/s, uncontended rounds | median tokens/s, all rounds |",
        "| --- | ---: | ---: |",
    ]
    for name in result["run"]["names"]:
        rows.append(f"| {LABELS[name]} | {cell(clean, name)} | {cell(every, name)} |")
    for name in result["run"]["names"][1:]:
        bold = "**" if name == ratio_name else ""
        low, high = clean["min_max_ratio"][name]
        rows.append(
            f"| {bold}{RATIO_LABELS[name]} / Hugging Face{bold} | {bold}{clean['median_of_ratios'][name]:.2f}{bold} "
            f"(per-round range {low:.2f}-{high:.2f}) | {every['median_of_ratios'][name]:.2f} |"
        )
    n_clean = clean["n_rounds"] if main["uncontended"] else 0
    nc_clean, nc_every = nocache["uncontended"] or nocache["all"], nocache["all"]
    cache_rows = [
        "| tfgraph `generate` | median tokens/s, uncontended rounds | median tokens/s, all rounds |",
        "| --- | ---: | ---: |",
        f"| with the KV cache | {cell(nc_clean, 'tfgraph')} | {cell(nc_every, 'tfgraph')} |",
        f"| without (`use_cache=False`) | {cell(nc_clean, 'tfgraph_no_cache')} | {cell(nc_every, 'tfgraph_no_cache')} |",
        f"| **with / without** | **{nc_clean['median_of_ratios']['tfgraph']:.1f}** | "
        f"{nc_every['median_of_ratios']['tfgraph']:.1f} |",
    ]
    env, run, check = result["environment"], result["run"], result["check"]
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in check["max_abs_logit_diff"].items())
    lines = [
        f"Measured {result['date']} on {env['cpu']} ({env['cpus']} CPUs, shared with other work), torch {env['torch']}, "
        f"transformers {env['transformers']}, {env['threads']} threads, Python {env['python']}.",
        "",
        "```",
        result["command"],
        "```",
        "",
        *rows,
        "",
        *cache_rows,
        "",
        f"{PROMPT_LEN}-token prompt, {NEW_TOKENS} new tokens, batch {BATCH}, greedy, fp32; tokens/s over the whole call "
        f"(prefill included). Both models: GPT-2 small, {check['parameters']:,} parameters, one random init (seed "
        f"{SEED}) copied from Hugging Face into tfgraph; largest logit difference to Hugging Face's: {diffs}; all "
        f"generators produce the identical {NEW_TOKENS} tokens. First table: {every['n_rounds']} interleaved rounds "
        f"(one call of each generator per round, after one warm-up call each), {n_clean} of them uncontended (other "
        f"processes used at most {run['max_other_cpu']:.0%} of the machine during each of the round's calls). Second "
        f"table: {nocache['all']['n_rounds']} rounds of the cached and uncached tfgraph generators "
        f"({nocache['uncontended']['n_rounds'] if nocache['uncontended'] else 0} uncontended); the ratio is the median "
        "of the per-round ratios. Per-call figures, CPU shares included, are in "
        "`experiments/benchmarks/results/generate_vs_hf.json`.",
    ]
    return "\n".join(lines)


INTRO = """\
How fast does tfgraph generate, and what does the KV cache buy? `experiments/benchmarks/generate_vs_hf.py` builds
Hugging Face's `GPT2LMHeadModel(GPT2Config())` (GPT-2 small, random init, dropout off) and tfgraph's `model=gpt2
model.dropout=0.0`, copies Hugging Face's weights into tfgraph, checks that the logits agree to 1e-4 and that the
greedy tokens are identical, then times greedy generation of 128 tokens from a 32-token prompt (batch 1, fp32, 2
threads), interleaving the generators in one process. A one-token decode step multiplies one vector by every weight
matrix, so it is bound by how fast the weights stream from memory; PyTorch's CPU `F.linear` does that on one thread
for a single row, so by default `tfgraph.decoding.generate` runs a float32 CPU model's linear layers on oneDNN's
multi-threaded kernel (`tfgraph/decoding/cpu.py`, the same weights in place); the table shows both. Target:
tfgraph >= 1.4x Hugging Face's tokens/s."""


def environment() -> dict:
    import transformers

    return {**common.environment(), "transformers": transformers.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="uncontended interleaved rounds to collect (default 15)")
    parser.add_argument("--no-cache-rounds", type=int, default=3, help="uncontended rounds with use_cache=False")
    parser.add_argument("--max-other-cpu", type=float, default=0.05, help="others' CPU share of an uncontended call")
    parser.add_argument("--max-seconds", type=float, default=900, help="stop collecting rounds after this long")
    parser.add_argument("--profile", action="store_true", help="only print a per-op profile of one generation each")
    parser.add_argument("--write-readme", action="store_true", help="put the table into experiments/README.md")
    args = parser.parse_args()

    torch.set_num_threads(THREADS)
    hf = build_hf()
    ours = build_tfgraph(hf)
    gens = generators(hf, ours)
    names = ["hf", "tfgraph", "tfgraph_pytorch_linear"]
    check = checks(hf, {"tfgraph": ours}, gens)
    if args.profile:
        op_profile(gens, names)
        return

    start = time.time()
    result = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python experiments/benchmarks/generate_vs_hf.py", *sys.argv[1:]]),
        "environment": environment(),
        "task": {"prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS, "batch": BATCH, "dtype": "float32"},
        "tfgraph_overrides": OVERRIDES,
        "run": {"names": names, "rounds": args.rounds, "max_other_cpu": args.max_other_cpu},
        "check": check,
        "throughput": throughput(
            gens, names, rounds=args.rounds, max_other=args.max_other_cpu, max_seconds=args.max_seconds
        ),
        "throughput_no_cache": throughput(
            gens,
            ["tfgraph_no_cache", "tfgraph"],
            rounds=args.no_cache_rounds,
            max_other=args.max_other_cpu,
            max_seconds=args.max_seconds,
        ),
    }
    result["seconds"] = time.time() - start
    table = markdown(result)
    print(table)
    RESULT_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULT_PATH.write_text(json.dumps(result, indent=2) + "\n")
    if args.write_readme:
        common.write_readme("generate_vs_hf", table, f"{README_HEADING}\n\n{INTRO}")


if __name__ == "__main__":
    main()
