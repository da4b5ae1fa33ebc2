"""Forward time and peak memory of each attention backend (``model.attention_backend``) for long contexts whose masks
SDPA can only take densely: ALiBi and T5 position biases, a sliding window, and padding.

The model: tfgraph's ``gpt2`` at d_model 256, 4 layers, 4 heads, d_ff 1024, vocab 8192, T=2048, B=2, evaluation
forward (no gradients: FlexAttention has no backward pass on CPU), with the position scheme or attention of the case;
the second row of the batch is right-padded after 3/4 of its tokens, so every case has a padding mask too. Each case
builds one model and runs it on each backend:

- ``math``: scores, mask and softmax written out (the reference);
- ``sdpa``: ``F.scaled_dot_product_attention`` with the dense ``[B, H, T, T]`` (or ``[B, 1, T, T]``) mask;
- ``flex``: FlexAttention, compiled by ``torch.compile`` (once per shape, before timing) with a block mask and, for
  the biases, a score modification from a per-distance table.

Every backend's output must equal the math reference's to 1e-4 before anything is timed. Timing: rounds of one
forward per backend, the order rotating from round to round; the ratio to SDPA is the median of the per-round ratios.
Peak memory: ``torch.profiler``'s allocation records over one forward (the peak of the bytes allocated above those at
its start; on CUDA ``torch.cuda.max_memory_allocated`` over the forward). It runs on CUDA too (``--device cuda``,
bf16) but has not been measured on a GPU.

Usage::

    python experiments/benchmarks/attention_backends.py [--rounds 5] [--write-readme]
    python experiments/benchmarks/attention_backends.py --tiny          # a tiny size, to test the script
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import common
import torch

import tfgraph
from tfgraph.models.transformer import Stack

HERE = Path(__file__).resolve().parent
RESULT_PATH = HERE / "results" / "attention_backends.json"
README_HEADING = "## Attention backends: forward time and peak memory at T=2048 (CPU)"
SIZES = dict(d_model=256, n_layers=4, n_heads=4, d_ff=1024, vocab_size=8192, max_len=2048, dropout=0.0)
TINY = dict(SIZES, d_model=32, n_layers=2, n_heads=2, d_ff=64, vocab_size=64, max_len=64)
CASES = {
    "ALiBi": ["model/position=alibi"],
    "T5 bias": ["model/position=t5_bias"],
    "sliding window 256": ["model/position=rope", "model/attention=sliding_window", "model.attention.window=256"],
    "padding only": ["model/position=rope"],
}
BACKENDS = ("math", "sdpa", "flex")
BATCH, SEQ_LEN, SEED = 2, 2048, 0


def build(case: str, sizes: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(SEED)
    cfg = tfgraph.compose(common.gpt2_overrides(sizes, *CASES[case]))
    return tfgraph.build_model(cfg.model).to(device=device, dtype=dtype).eval()


def set_backend(model: torch.nn.Module, backend: str) -> None:
    for module in model.modules():
        if isinstance(module, Stack):
            module.attention_backend = backend


def inputs(vocab: int, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, vocab, (BATCH, seq_len), generator=torch.Generator().manual_seed(SEED)).to(device)
    mask = torch.ones(BATCH, seq_len, dtype=torch.long, device=device)
    mask[1, seq_len * 3 // 4 :] = 0
    return ids, mask


def peak_bytes(forward, device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        forward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    return common.profiled_peak_bytes(forward)


def measure_case(case: str, sizes: dict, seq_len: int, rounds: int, device: torch.device, dtype: torch.dtype) -> dict:
    model = build(case, sizes, device, dtype)
    ids, mask = inputs(sizes["vocab_size"], seq_len, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def forward(backend: str):
        set_backend(model, backend)
        with torch.no_grad():
            return model(ids, attention_mask=mask)

    reference = forward("math")
    compile_s, diffs = {}, {}
    for backend in BACKENDS:
        start = time.perf_counter()
        out = forward(backend)  # flex compiles here (once per shape)
        sync()
        compile_s[backend] = time.perf_counter() - start
        diffs[backend] = (out.float() - reference.float()).abs().max().item()
        tolerance = 1e-4 if dtype == torch.float32 else 5e-2
        if diffs[backend] > tolerance:
            raise SystemExit(f"{case}: {backend} differs from the math reference by {diffs[backend]:.2e}")
    seconds: dict[str, list[float]] = {b: [] for b in BACKENDS}
    for r in range(rounds):
        order = BACKENDS[r % len(BACKENDS) :] + BACKENDS[: r % len(BACKENDS)]
        for backend in order:
            sync()
            start = time.perf_counter()
            forward(backend)
            sync()
            seconds[backend].append(time.perf_counter() - start)
        print(f"{case} round {r + 1}: " + ", ".join(f"{b} {seconds[b][-1] * 1e3:.0f} ms" for b in BACKENDS), flush=True)
    return {
        "seconds": seconds,
        "median_ms": {b: statistics.median(s) * 1e3 for b, s in seconds.items()},
        "vs_sdpa": {
            b: statistics.median(x / y for x, y in zip(s, seconds["sdpa"], strict=True)) for b, s in seconds.items()
        },
        "peak_bytes": {b: peak_bytes(lambda b=b: forward(b), device) for b in BACKENDS},
        "first_call_s": compile_s,
        "max_abs_diff_vs_math": diffs,
    }


def markdown(result: dict) -> str:
    env = result["environment"]
    rows = [
        "| case | backend | median ms per forward | time / SDPA, median of per-round ratios | peak allocated in the forward (MiB) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for case, measured in result["cases"].items():
        for backend in BACKENDS:
            ratio = measured["vs_sdpa"][backend]
            rows.append(
                f"| {case} | {'**flex**' if backend == 'flex' else backend} | {measured['median_ms'][backend]:,.0f} | "
                f"{ratio:.2f} | {measured['peak_bytes'][backend] / 2**20:,.1f} |"
            )
    config = result["config"]
    note = (
        f"Evaluation forward of tfgraph `gpt2` at d_model {config['sizes']['d_model']}, {config['sizes']['n_layers']} "
        f"layers, {config['sizes']['n_heads']} heads, B={BATCH}, T={config['seq_len']} ({config['dtype']}, "
        f"{config['device']}), the second row padded after 3/4; {result['rounds']} rounds, the backends' order rotating. "
        "Every backend's output equals the math reference's (largest difference "
        f"{max(d for m in result['cases'].values() for d in m['max_abs_diff_vs_math'].values()):.1e}). flex's first "
        "call compiles ("
        + ", ".join(f"{case} {m['first_call_s']['flex']:.0f} s" for case, m in result["cases"].items())
        + "); peak allocated: the profiler's allocation records over one forward, above what was allocated before it."
    )
    measured = (
        common.measured_on_shared_cpu(result["date"], env)
        if config["device"] == "cpu"
        else (f"Measured {result['date']} on {config['device_name']}, torch {env['torch']}")
    )
    return common.report(measured + f", {env['threads']} threads.", result["command"], rows, note)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per case (default 5)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), help="the cases to run")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda (bf16)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and context (to test the script)")
    parser.add_argument("--write-readme", action="store_true", help="put the table into experiments/README.md")
    parser.add_argument("--out", type=Path, default=RESULT_PATH, help="where the JSON result goes")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes, seq_len = (TINY, 64) if args.tiny else (SIZES, SEQ_LEN)
    result = {
        **common.run_record(__file__, argv),
        "config": {
            "sizes": sizes,
            "seq_len": seq_len,
            "dtype": str(dtype).removeprefix("torch."),
            "device": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "rounds": args.rounds,
        "cases": {case: measure_case(case, sizes, seq_len, args.rounds, device, dtype) for case in args.cases},
    }
    common.publish(
        "attention_backends",
        markdown(result),
        result,
        args.out,
        readme=args.write_readme and not args.tiny,
        heading=README_HEADING,
    )
    return result


if __name__ == "__main__":
    main()
