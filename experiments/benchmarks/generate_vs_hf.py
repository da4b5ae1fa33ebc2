"""Greedy generation throughput of tfgraph's ``gpt2`` and ``gpt2_tiny`` against Hugging Face transformers' GPT-2 with
the same weights, for every CPU linear kernel, eager and compiled.

For each size, Hugging Face's ``GPT2LMHeadModel`` (``gpt2``: GPT-2 small, 124M parameters; ``gpt2_tiny``: 2 layers of
width 64, where per-token overhead dominates; random init, no dropout, no download) and tfgraph's ``model=<size>
model.dropout=0.0`` get the same weights: HF's are copied into tfgraph (HF's ``Conv1D`` stores ``[in, out]``,
tfgraph's ``nn.Linear`` ``[out, in]``; ``c_attn`` is the same fused ``q | k | v``). The logits must agree to 1e-4 and
every generator's greedy tokens must equal Hugging Face's before anything is timed.

Task: 128 new tokens from one 32-token prompt, batch 1, greedy, fp32, ``torch.set_num_threads(2)``; tokens/s counts
the 128 new tokens over the wall time of the whole call (prefill included). Timed, in one process:

- Hugging Face: ``model.generate(use_cache=True, do_sample=False)`` (its default SDPA attention);
- tfgraph ``generate(model, prompt, max_new_tokens=128)`` as it runs by default: ``cpu_linear="auto"``, the faster of
  the two linear kernels as timed on this machine the first time the model generates (``tfgraph/decoding/cpu.py``);
- tfgraph with each kernel forced (``cpu_linear="onednn"``, ``cpu_linear="pytorch"``), eager and with
  ``compile=True`` (each decode step one ``torch.compile`` graph over a static cache; compiled before timing);
- tfgraph without the cache (``use_cache=False``: every step re-runs the whole sequence), ``gpt2`` only, fewer rounds.

The generators run interleaved, one call each per round, and the ratio to Hugging Face is the median of the
per-round ratios, so a load that comes and goes weighs on both sides alike. The order of the calls changes from round
to round as the rows of a Williams design (:func:`run_orders`): over each cycle of ``n`` rounds (``2n`` for an odd
number ``n`` of generators) every generator runs equally often in each position and right after each other generator
equally often, so none always runs first, last or after a given other (whatever it leaves behind in caches, or the
load it meets). Give a multiple of the cycle's rounds for that balance (the table says how many cycles ran). The
machine may be shared: every call also records its process CPU time and the CPU time the rest of the machine used
meanwhile (``/proc/stat``); a round is uncontended when, in all of its calls, other processes used less than
``--max-other-cpu`` of the machine, and the table calls the machine idle only when every round was uncontended.

Usage::

    python experiments/benchmarks/generate_vs_hf.py [--rounds N] [--tiny-rounds N] [--write-readme]
    python experiments/benchmarks/generate_vs_hf.py --profile   # per-op CPU time of one generation each

Prints markdown tables and writes ``results/generate_vs_hf.json`` next to this file; ``--write-readme`` puts them
into their section of ``experiments/README.md``.
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
from tfgraph.decoding import choose_linear, cpu, generate

HERE = Path(__file__).resolve().parent
RESULT_PATH = HERE / "results" / "generate_vs_hf.json"
README_HEADING = "## Generation throughput: tfgraph gpt2 vs Hugging Face GPT-2, with and without the KV cache"

PROMPT_LEN, NEW_TOKENS, BATCH = 32, 128, 1
THREADS = 2
SEED = 0
LOGIT_ATOL = 1e-4
SIZES = {  # tfgraph preset -> the Hugging Face GPT2Config of the same architecture
    "gpt2": {},
    "gpt2_tiny": {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 512, "n_positions": 256, "bos_token_id": 0,
                  "eos_token_id": 0},
}  # fmt: skip
REPEAT = {"gpt2": 1, "gpt2_tiny": 3}  # generations per timed call (a tiny one takes milliseconds)
INIT_RANGE = {"gpt2": 0.02, "gpt2_tiny": 0.2}  # tiny at 0.02 has near-uniform logits: ties decided by rounding
LABELS = {
    "hf": "Hugging Face `generate(use_cache=True)`",
    "tfgraph": "tfgraph `generate` (default: `cpu_linear=auto`)",
    "onednn": '`cpu_linear="onednn"`',
    "pytorch": '`cpu_linear="pytorch"`',
    "compile_onednn": '`compile=True, cpu_linear="onednn"`',
    "compile_pytorch": '`compile=True, cpu_linear="pytorch"`',
    "no_cache": "`use_cache=False`",
}
PATHS = {  # generator -> generate's keywords
    "tfgraph": {},
    "onednn": {"cpu_linear": "onednn"},
    "pytorch": {"cpu_linear": "pytorch"},
    "compile_onednn": {"compile": True, "cpu_linear": "onednn"},
    "compile_pytorch": {"compile": True, "cpu_linear": "pytorch"},
    "no_cache": {"use_cache": False},
}


# ------------------------------------------------------------------------------------------------------- models


def build_hf(size: str) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(SEED)
    config = GPT2Config(
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=INIT_RANGE[size], **SIZES[size]
    )
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


def build_tfgraph(size: str, hf: nn.Module) -> nn.Module:
    model = tfgraph.build_model(tfgraph.compose([f"model={size}", "model.dropout=0.0"]).model).eval()
    copy_from_hf(model, hf)
    return model


def prompt(vocab_size: int) -> Tensor:
    return torch.randint(0, vocab_size, (BATCH, PROMPT_LEN), generator=torch.Generator().manual_seed(SEED))


def generators(hf: nn.Module, ours: nn.Module, names: list[str], repeat: int = 1) -> dict[str, Callable[[], Tensor]]:
    """Each generator as a closure returning the new tokens [1, 128] (of the last of ``repeat`` generations)."""
    from transformers import GenerationConfig

    ids = prompt(ours.vocab_size)
    mask = torch.ones_like(ids)
    config = GenerationConfig(
        max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0
    )

    @torch.no_grad()
    def run_hf() -> Tensor:
        for _ in range(repeat):
            out = hf.generate(ids, attention_mask=mask, generation_config=config)[:, PROMPT_LEN:]
        return out

    def path(keywords: dict) -> Callable[[], Tensor]:
        def run() -> Tensor:
            for _ in range(repeat):
                out = generate(ours, ids, max_new_tokens=NEW_TOKENS, **keywords).sequences
            return out

        return run

    return {"hf": run_hf} | {name: path(PATHS[name]) for name in names if name != "hf"}


def checks(hf: nn.Module, ours: nn.Module, gens: dict[str, Callable[[], Tensor]]) -> dict:
    """Same logits (to 1e-4) and identical greedy tokens for every generator; the first call of each, timed (a
    compiled generator compiles then)."""
    ids = prompt(ours.vocab_size)
    with torch.no_grad():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()
    assert diff <= LOGIT_ATOL, f"logits differ from Hugging Face's by {diff} > {LOGIT_ATOL}"
    tokens, first_call = {}, {}
    for name, gen in gens.items():
        began = time.perf_counter()
        tokens[name] = gen()
        first_call[name] = time.perf_counter() - began
    for name, t in tokens.items():
        assert t.shape == (BATCH, NEW_TOKENS), (name, t.shape)
        assert torch.equal(t, tokens["hf"]), f"{name} generated other tokens than Hugging Face"
    return {
        "max_abs_logit_diff": diff,
        "identical_tokens": True,
        "parameters": sum(p.numel() for p in hf.parameters()),
        "first_tokens": tokens["hf"][0, :8].tolist(),
        "first_call_seconds": first_call,
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


def timed(gen: Callable[[], Tensor], repeat: int) -> dict:
    """One call of ``repeat`` generations: tokens/s, this process's CPU share of its threads, the rest of the
    machine's share of all CPUs."""
    busy, wall, cpu_time = machine_busy(), time.perf_counter(), time.process_time()
    gen()
    wall, cpu_time = time.perf_counter() - wall, time.process_time() - cpu_time
    after = machine_busy()
    other = None if busy is None else max(0.0, (after - busy) - cpu_time) / (wall * os.cpu_count())
    return {
        "tokens_per_s": repeat * NEW_TOKENS * BATCH / wall,
        "cpu_share": cpu_time / (wall * THREADS),
        "other_cpu": other,
    }


def throughput(
    gens: dict[str, Callable[[], Tensor]], names: list[str], *, rounds: int, max_other: float, repeat: int = 1
) -> dict:
    """Call the generators in turn, ``rounds`` rounds, each round in the next order of :func:`run_orders` (each
    generator was called once before, by :func:`checks`)."""
    records = []
    orders = run_orders(len(names))
    for round_index in range(rounds):
        order = [names[i] for i in orders[round_index % len(orders)]]
        calls = {name: timed(gens[name], repeat) for name in order}
        clean = all(c["other_cpu"] is None or c["other_cpu"] <= max_other for c in calls.values())
        records.append({"order": order, "calls": calls, "clean": clean, "load_average_1min": os.getloadavg()[0]})
        print(
            f"round {len(records)}: "
            + ", ".join(
                f"{n} {c['tokens_per_s']:.1f} tok/s (others {c['other_cpu'] or 0:.0%})" for n, c in calls.items()
            )
            + ("" if clean else "  [contended]"),
            file=sys.stderr,
            flush=True,
        )
    return {
        "rounds": records,
        "orders_per_cycle": len(orders),
        "all": summary(records, names),
        "uncontended": summary([r for r in records if r["clean"]], names),
        "median_load_average_1min": statistics.median(r["load_average_1min"] for r in records),
    }


def run_orders(n: int) -> list[list[int]]:
    """The orders of ``n`` generators over one cycle of rounds: a Williams design, ``n`` orders for an even ``n`` and
    ``2n`` for an odd one, in which each generator holds each position equally often and follows each other
    generator equally often (a cyclic rotation would not do: in it ``b`` always runs right after ``a``)."""
    first, low, high = [0], 1, n - 1  # 0, 1, n-1, 2, n-2, ...
    while low <= high:
        first.append(low)
        low += 1
        if low <= high:
            first.append(high)
            high -= 1
    orders = [[(i + shift) % n for i in first] for shift in range(n)]
    return orders if n % 2 == 0 else orders + [order[::-1] for order in orders]


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


def size_table(size: str, part: dict) -> list[str]:
    """The table of one model size: each generator's tokens/s and its ratio to Hugging Face."""
    every, clean, choice = part["throughput"]["all"], part["throughput"]["uncontended"], part["choice"]
    again = choice["timings"][1:]
    retimed = (
        f"; timed again {len(again)} time(s) during the rounds, its steps having drifted from the timing: "
        + ", ".join(f"{t['kernel']} ({t['reason']}, ratio {t['ratio']:.2f} of {t['pairs']} pairs)" for t in again)
        if again
        else ""
    )
    rows = [
        f"`{size}` ({part['check']['parameters']:,} parameters, {part['repeat']} generation(s) per timed call); "
        f"`cpu_linear=auto` chose **{choice['kernel']}** on the first generation (decode step "
        f"{', '.join(f'{k} {v:.2f} ms' for k, v in choice['step_ms'].items())}; oneDNN / PyTorch "
        f"{choice['ratio']:.2f}, the median of {choice['pairs']} pairs of steps{retimed}):",
        "",
        "| generator | median tokens/s | / Hugging Face, median of per-round ratios (range) | uncontended rounds |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in part["names"]:
        label = LABELS[name] if name in ("hf", "tfgraph") else f"tfgraph {LABELS[name]}"
        tokens = f"{every['median_tokens_per_s'][name]:.1f}"
        if name == "hf":
            rows.append(f"| {label} | {tokens} | 1.00 | |")
            continue
        low, high = every["min_max_ratio"][name]
        ratio = f"{every['median_of_ratios'][name]:.2f} ({low:.2f}-{high:.2f})"
        if name == "tfgraph":
            label, ratio = f"**{label}**", f"**{ratio}**"
        uncontended = f"{clean['median_of_ratios'][name]:.2f} of {clean['n_rounds']}" if clean else "none"
        rows.append(f"| {label} | {tokens} | {ratio} | {uncontended} |")
    return rows


def markdown(result: dict) -> str:
    env, run, sizes = result["environment"], result["run"], result["sizes"].items()
    lines = [
        f"Measured {result['date']} on {env['cpu']} ({env['cpus']} CPUs, {machine_state(result)}; median "
        f"1-minute load average {result['median_load']:.1f}, this run's own included), torch {env['torch']}, transformers "
        f"{env['transformers']}, {env['threads']} threads, Python {env['python']}.",
        "",
        "```",
        result["command"],
        "```",
        "",
    ]
    for size, part in result["sizes"].items():
        lines += [*size_table(size, part), ""]
    nocache = result.get("no_cache")
    if nocache:
        every = nocache["all"]
        lines += [
            "| tfgraph `gpt2` `generate` | median tokens/s |",
            "| --- | ---: |",
            f"| with the KV cache (default) | {every['median_tokens_per_s']['tfgraph']:.1f} |",
            f"| without (`use_cache=False`) | {every['median_tokens_per_s']['no_cache']:.1f} |",
            f"| **with / without**, median of per-round ratios | **{every['median_of_ratios']['tfgraph']:.1f}** |",
            "",
        ]
    compile_cost = ", ".join(
        f"`{size}` {part['check']['first_call_seconds'][name]:.0f} s ({name.removeprefix('compile_')})"
        for size, part in result["sizes"].items()
        for name in part["names"]
        if name.startswith("compile_")
    )
    lines.append(
        f"{PROMPT_LEN}-token prompt, {NEW_TOKENS} new tokens, batch {BATCH}, greedy, fp32; tokens/s over the whole call "
        f"(prefill included). Each size: one random init (seed {SEED}) copied from Hugging Face into tfgraph; "
        "largest logit difference to Hugging Face's: "
        + ", ".join(f"`{s}` {p['check']['max_abs_logit_diff']:.1e}" for s, p in result["sizes"].items())
        + f"; every generator produces Hugging Face's {NEW_TOKENS} tokens. Rounds: "
        + ", ".join(f"`{s}` {p['throughput']['all']['n_rounds']} ({cycles(p['throughput'])})" for s, p in sizes)
        + ", after one untimed call of each generator"
        + (f" (a compiled one compiles then: {compile_cost}; once per process and model shape)" if compile_cost else "")
        + ". Each round calls every generator once, in an order that changes from round to round (a Williams design: "
        "in each cycle of orders every generator runs equally often in each position and right after each other "
        f"generator). A round is uncontended when other processes used at most {run['max_other_cpu']:.0%} of the "
        "machine during each of its calls. Per-call figures are in `experiments/benchmarks/results/generate_vs_hf.json`."
    )
    return "\n".join(lines)


def machine_state(result: dict) -> str:
    """Whether the machine was idle, as the timed calls measured it: "idle" when every round was uncontended, else
    "shared" with the median and the largest share of the CPUs other processes used during a call."""
    rounds = [r for part in result["sizes"].values() for r in part["throughput"]["rounds"]]
    others = [c["other_cpu"] for r in rounds for c in r["calls"].values() if c["other_cpu"] is not None]
    if not others:
        return "the load of other processes unknown (no /proc/stat)"
    contended = sum(not r["clean"] for r in rounds)
    if not contended:
        return f"**idle**: other processes used at most {max(others):.0%} of its CPUs during every timed call"
    return (
        f"**shared**: other processes used a median {statistics.median(others):.0%} (at most {max(others):.0%}) of its "
        f"CPUs during the timed calls, {contended} of {len(rounds)} rounds contended"
    )


def cycles(throughput: dict) -> str:
    """How many cycles of the order design the rounds made ("2 cycles of 6 orders", or the rounds left over)."""
    n, per = len(throughput["rounds"]), throughput["orders_per_cycle"]
    whole, left = divmod(n, per)
    text = f"{whole} cycle{'s' if whole != 1 else ''} of {per} orders"
    return text if not left else f"{text} and {left} round{'s' if left != 1 else ''} (positions not balanced)"


INTRO = """\
How fast does tfgraph generate, on whatever CPU it runs? `experiments/benchmarks/generate_vs_hf.py` builds Hugging
Face's `GPT2LMHeadModel` at two sizes (`gpt2`, GPT-2 small; `gpt2_tiny`, where per-token overhead dominates; random
init, dropout off) and tfgraph's `model=<size> model.dropout=0.0`, copies Hugging Face's weights into tfgraph, checks
that the logits agree to 1e-4 and that every generator's greedy tokens are Hugging Face's, then times greedy
generation of 128 tokens from a 32-token prompt (batch 1, fp32, 2 threads), interleaving the generators in one
process. A one-token decode step multiplies one vector by every weight matrix; which of PyTorch's linear kernel and
oneDNN's (multi-threaded for one row) does that faster depends on the CPU, the shapes and the load on the machine, so
by default `tfgraph.decoding.generate` times decode steps on both in pairs the first time a model generates, takes
oneDNN only when the median of the per-pair ratios says it is faster by 10%, and times again, briefly, when later
steps drift far from that timing (`cpu_linear=auto`, `tfgraph/decoding/cpu.py`); `compile=True` runs each step as one
`torch.compile` graph over a static cache (opt-in: it pays back only over tens of thousands of tokens). Target: the
default at least 1.2x Hugging Face's tokens/s for both sizes, and never below 1.0x."""


def environment() -> dict:
    import transformers

    return {**common.environment(), "transformers": transformers.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds for gpt2 (default 6)")
    parser.add_argument("--tiny-rounds", type=int, default=12, help="interleaved rounds for gpt2_tiny (default 12)")
    parser.add_argument("--no-cache-rounds", type=int, default=1, help="gpt2 rounds with use_cache=False (default 1)")
    parser.add_argument("--max-other-cpu", type=float, default=0.05, help="others' CPU share of an uncontended call")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES), help="model sizes to time")
    parser.add_argument("--profile", action="store_true", help="only print a per-op profile of one generation each")
    parser.add_argument("--write-readme", action="store_true", help="put the tables into experiments/README.md")
    args = parser.parse_args()

    torch.set_num_threads(THREADS)
    names = ["hf", "tfgraph", "onednn", "pytorch", "compile_onednn", "compile_pytorch"]
    if not cpu.onednn_available():
        names = [n for n in names if "onednn" not in n]
    result = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python experiments/benchmarks/generate_vs_hf.py", *sys.argv[1:]]),
        "environment": environment(),
        "task": {"prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS, "batch": BATCH, "dtype": "float32"},
        "run": {"names": names, "max_other_cpu": args.max_other_cpu},
        "sizes": {},
    }
    start = time.time()
    for size in args.sizes:
        hf = build_hf(size)
        ours = build_tfgraph(size, hf)
        gens = generators(hf, ours, [*names, "no_cache"], REPEAT[size])
        if args.profile:
            op_profile(gens, names)
            continue
        print(f"{size}: checking and compiling", file=sys.stderr, flush=True)
        check = checks(hf, ours, {n: gens[n] for n in names})  # the default's first call times the kernels
        choice = choose_linear(ours, rows=BATCH)
        rounds = args.rounds if size == "gpt2" else args.tiny_rounds
        timed_rounds = throughput(gens, names, rounds=rounds, max_other=args.max_other_cpu, repeat=REPEAT[size])
        result["sizes"][size] = {
            "names": names,
            "check": check,
            "choice": choice_record(choice),
            "repeat": REPEAT[size],
            "throughput": timed_rounds,
        }
        if size == "gpt2" and args.no_cache_rounds:
            result["no_cache"] = throughput(
                gens, ["no_cache", "tfgraph"], rounds=args.no_cache_rounds, max_other=args.max_other_cpu
            )
        report(result, start, write_readme=args.write_readme)  # after each size: a run cut short keeps what it has


def choice_record(choice: cpu.LinearChoice) -> dict:
    """What ``cpu_linear=auto`` chose for a model, and every timing of its kernels in this process so far (the first,
    then any made again because the steps drifted, :func:`tfgraph.decoding.cpu.observe`)."""
    timings = [
        {"kernel": c.kernel, "reason": c.reason, "ratio": c.ratio, "pairs": c.pairs, "step_ms": c.step_ms}
        for c in cpu.measurements()
        if c.key == choice.key
    ]
    return {
        "kernel": choice.kernel,
        "reason": choice.reason,
        "step_ms": choice.step_ms,
        "ratio": choice.ratio,
        "pairs": choice.pairs,
        "timings": timings,
    }


def report(result: dict, start: float, *, write_readme: bool) -> None:
    """Print the tables of the sizes timed so far, write the JSON and, if asked, experiments/README.md."""
    result["seconds"] = time.time() - start
    loads = [r["load_average_1min"] for part in result["sizes"].values() for r in part["throughput"]["rounds"]]
    result["median_load"] = statistics.median(loads)
    table = markdown(result)
    print(table, flush=True)
    RESULT_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULT_PATH.write_text(json.dumps(result, indent=2) + "\n")
    if write_readme:
        common.write_readme("generate_vs_hf", table, f"{README_HEADING}\n\n{INTRO}")


if __name__ == "__main__":
    main()
