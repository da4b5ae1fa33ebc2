"""GPU benchmark: training tokens/s, MFU and peak memory of tfgraph's ``gpt2`` (124M) in bf16 with ``torch.compile``
at T=1024 beside the hand-written nanoGPT (``nanogpt.py``) in the same run, and greedy generation tokens/s beside
Hugging Face's GPT-2 with the same weights.

Training: both models start from the same weights (tfgraph's copied into nanoGPT; the fp32 logits must agree to 1e-4
first). A step is bf16 autocast over fp32 weights, forward, cross-entropy, backward, AdamW (fused on CUDA), zero_grad,
on one fixed random batch; ``torch.compile`` compiles each model whole (``--no-compile``: eager). After ``--warmup``
steps the models alternate in rounds of ``--steps`` steps; tokens/s is the median over the rounds, timed between
device synchronisations. MFU: achieved FLOP/s over the device's dense bf16 peak (:data:`PEAK_BF16`, by device name),
counting 6 N + 12 L T d FLOPs per token (parameters N without the position table; nanoGPT's and PaLM's estimate).
Peak memory: ``torch.cuda.max_memory_allocated`` over each model's training (on a CPU: not measured).

Generation: ``--new-tokens`` greedy tokens from a ``--prompt-len`` prompt, batch 1, the models cast to bf16 on CUDA
(fp32 on a CPU): Hugging Face ``generate(use_cache=True)``, tfgraph ``generate`` eager, and with ``compile=True``
unless ``--no-compile``; tokens/s over the whole call, median of ``--gen-rounds`` interleaved rounds.

Usage::

    python experiments/benchmarks/gpu.py [--write-readme]            # on a GPU: gpt2 124M, B=8, T=1024
    python experiments/benchmarks/gpu.py --tiny --device cpu --no-compile  # a tiny run that tests the script

Prints a markdown table and writes ``results/gpu.json`` next to this file (``--out``); ``--write-readme`` puts the
table into its section of ``experiments/README.md``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import common
import torch
import torch.nn.functional as F
from generate_vs_hf import copy_from_hf
from nanogpt import GPT, copy_from_tfgraph
from torch import Tensor, nn

import tfgraph
from tfgraph.decoding import generate

HERE = Path(__file__).resolve().parent
RESULT_PATH = HERE / "results" / "gpu.json"
README_HEADING = "## GPU: training and generation throughput of gpt2 124M (bf16, torch.compile)"
SEED = 0
LOGIT_ATOL = 1e-4
NAMES = ("tfgraph", "nanogpt")
FULL = dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072, vocab_size=50257, max_len=1024)
TINY = dict(d_model=64, n_layers=2, n_heads=4, d_ff=256, vocab_size=512, max_len=64)
# dense bf16 tensor-core peaks (FLOP/s, no sparsity) of the devices' data sheets, matched by name, first match wins
PEAK_BF16 = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "RTX A6000": 155e12,
    "MI300X": 1307e12,
    "MI250X": 383e12,
}


def device_peak(device: torch.device) -> tuple[str, float | None]:
    """The device's name and dense bf16 peak in FLOP/s (``None``: a CPU, or a GPU missing from the table)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def flops_per_token(sizes: dict, seq_len: int, n_params: int) -> float:
    """Training FLOPs per token: 6 N (forward and backward through the weights) + 12 L T d (attention scores)."""
    return 6 * n_params + 12 * sizes["n_layers"] * seq_len * sizes["d_model"]


# ------------------------------------------------------------------------------------------------------ training


def paired_models(sizes: dict, device: torch.device) -> tuple[nn.Module, GPT, dict]:
    torch.manual_seed(SEED)
    ours = tfgraph.build_model(tfgraph.compose(common.gpt2_overrides(sizes, "model.dropout=0.0")).model)
    hand = GPT(**sizes)
    copy_from_tfgraph(hand, ours)
    ours, hand = ours.to(device), hand.to(device)
    ids = torch.randint(0, sizes["vocab_size"], (2, 32), generator=torch.Generator().manual_seed(SEED)).to(device)
    with torch.no_grad():
        diff = (ours(ids) - hand(ids)).abs().max().item()
    assert diff <= LOGIT_ATOL, f"logits differ by {diff} > {LOGIT_ATOL}"
    n_params = sum(p.numel() for p in ours.parameters())
    return ours, hand, {"parameters": n_params, "max_abs_logit_diff": diff}


def train_step_fn(model: nn.Module, batch: tuple[Tensor, Tensor], device: torch.device, compile: bool) -> Callable:
    x, y = batch
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, **fused)
    model.train()
    forward = torch.compile(model) if compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step() -> Tensor:
        with autocast:
            logits = forward(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable, steps: int, device: torch.device, tokens_per_step: int) -> float:
    """Tokens per second over ``steps`` calls of ``step``, timed between synchronisations of ``device``."""
    return common.timed(step, steps, tokens_per_step, lambda: synchronize(device))[0]


def training(args: argparse.Namespace, sizes: dict, device: torch.device) -> dict:
    ours, hand, check = paired_models(sizes, device)
    g = torch.Generator().manual_seed(SEED)
    tokens = torch.randint(0, sizes["vocab_size"], (args.batch, args.seq_len + 1), generator=g).to(device)
    batch = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    steps = {
        "tfgraph": train_step_fn(ours, batch, device, args.compile),
        "nanogpt": train_step_fn(hand, batch, device, args.compile),
    }
    tokens_per_step = args.batch * args.seq_len
    peak_memory, first_losses = {}, {}
    for name, step in steps.items():  # warm-up (compiles), each model's peak memory apart
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        first_losses[name] = step().item()
        for _ in range(args.warmup - 1):
            step()
        synchronize(device)
        peak_memory[name] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    rounds = common.repeat_rounds(
        lambda: {name: timed(step, args.steps, device, tokens_per_step) for name, step in steps.items()},
        rounds=args.rounds,
    )
    name_of_device, peak = device_peak(device)
    flops = flops_per_token(sizes, args.seq_len, check["parameters"] - sizes["max_len"] * sizes["d_model"])
    result = {"check": check, "first_losses": first_losses, "rounds": rounds, "peak_memory_bytes": peak_memory}
    result["tokens_per_s"] = {name: statistics.median(r[name] for r in rounds) for name in NAMES}
    result["ratio"] = statistics.median(r["tfgraph"] / r["nanogpt"] for r in rounds)
    result["flops_per_token"] = flops
    result["mfu"] = {n: (tps * flops / peak if peak else None) for n, tps in result["tokens_per_s"].items()}
    result["device"], result["peak_bf16_flops"] = name_of_device, peak
    return result


# ---------------------------------------------------------------------------------------------------- generation


def generation(args: argparse.Namespace, sizes: dict, device: torch.device) -> dict:
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(SEED)
    hf_config = GPT2Config(
        n_embd=sizes["d_model"], n_layer=sizes["n_layers"], n_head=sizes["n_heads"], n_inner=sizes["d_ff"],
        vocab_size=sizes["vocab_size"], n_positions=sizes["max_len"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=sizes["vocab_size"] - 1, eos_token_id=sizes["vocab_size"] - 1,
    )  # fmt: skip
    hf = GPT2LMHeadModel(hf_config).eval()
    ours = tfgraph.build_model(tfgraph.compose(common.gpt2_overrides(sizes, "model.dropout=0.0")).model).eval()
    copy_from_hf(ours, hf)
    ids = torch.randint(0, sizes["vocab_size"], (1, args.prompt_len), generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()
    assert diff <= LOGIT_ATOL, f"logits differ from Hugging Face's by {diff} > {LOGIT_ATOL}"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    hf, ours, ids = hf.to(device, dtype), ours.to(device, dtype), ids.to(device)
    mask = torch.ones_like(ids)
    config = GenerationConfig(
        max_new_tokens=args.new_tokens, do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None
    )

    @torch.no_grad()
    def run_hf() -> Tensor:
        return hf.generate(ids, attention_mask=mask, generation_config=config)[:, args.prompt_len :]

    def run_ours(**options: bool) -> Callable[[], Tensor]:
        return lambda: generate(ours, ids, max_new_tokens=args.new_tokens, **options).sequences

    gens = {"hf": run_hf, "tfgraph": run_ours()}
    if args.compile:
        gens["tfgraph_compiled"] = run_ours(compile=True)
    first = {name: gen() for name, gen in gens.items()}  # warm-up (compiles)
    same = {name: bool(torch.equal(t, first["hf"])) for name, t in first.items()}
    rounds = common.repeat_rounds(
        lambda: {name: timed(gen, 1, device, args.new_tokens) for name, gen in gens.items()}, rounds=args.gen_rounds
    )
    return {
        "max_abs_logit_diff_fp32": diff,
        "dtype": str(dtype).removeprefix("torch."),
        "same_tokens_as_hf": same,
        "rounds": rounds,
        "tokens_per_s": {name: statistics.median(r[name] for r in rounds) for name in gens},
    }


# -------------------------------------------------------------------------------------------------------- report


def markdown(result: dict) -> str:
    train, gen, env = result["training"], result["generation"], result["environment"]
    labels = {"tfgraph": "tfgraph `gpt2`", "nanogpt": "hand-written nanoGPT"}
    compiled = "torch.compile" if result["args"]["compile"] else "eager"
    rows = [
        f"| training ({compiled}, bf16 autocast) | tokens/s | MFU | peak memory (GiB) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in NAMES:
        mfu, mem = train["mfu"][name], train["peak_memory_bytes"][name]
        rows.append(
            f"| {labels[name]} | {train['tokens_per_s'][name]:,.0f} | {'n/a' if mfu is None else f'{mfu:.1%}'} "
            f"| {'n/a' if mem is None else f'{mem / 1024**3:.2f}'} |"
        )
    rows.append(f"| **tfgraph / nanoGPT** | **{train['ratio']:.3f}** | | |")
    rows += [
        "",
        f"| generation ({gen['dtype']}, greedy, batch 1) | tokens/s | same tokens as HF |",
        "| --- | ---: | --- |",
    ]
    gen_labels = {
        "hf": "Hugging Face `generate`",
        "tfgraph": "tfgraph `generate`",
        "tfgraph_compiled": "tfgraph `generate(compile=True)`",
    }
    for name, tps in gen["tokens_per_s"].items():
        rows.append(f"| {gen_labels[name]} | {tps:,.1f} | {'yes' if gen['same_tokens_as_hf'][name] else 'no'} |")
    a = result["args"]
    return common.report(
        f"Measured {result['date']} on {train['device']} (bf16 peak {train['peak_bf16_flops'] or 'n/a'} FLOP/s), "
        f"CPU {env['cpu']}, torch {env['torch']}.",
        result["command"],
        rows,
        f"{train['check']['parameters']:,} parameters, B={a['batch']}, T={a['seq_len']}, {a['rounds']} rounds of "
        f"{a['steps']} steps per model after {a['warmup']} warm-up steps; {train['flops_per_token']:,.0f} FLOPs per "
        f"token for MFU. Generation: {a['new_tokens']} new tokens from {a['prompt_len']}, median of "
        f"{a['gen_rounds']} rounds.",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer gpt2 at T=64 (tests the script; not a result)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager instead of torch.compile")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=5, help="warm-up steps per model (compilation happens here)")
    parser.add_argument("--steps", type=int, default=10, help="steps per model per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--gen-rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULT_PATH, help="where the JSON result goes")
    parser.add_argument("--write-readme", action="store_true", help="put the table into experiments/README.md")
    args = parser.parse_args(argv)
    if args.tiny:
        args.seq_len, args.batch = min(args.seq_len, TINY["max_len"]), min(args.batch, 2)
        args.prompt_len, args.new_tokens = min(args.prompt_len, 8), min(args.new_tokens, 16)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no GPU here: run on one, or test the script with --tiny --device cpu --no-compile")
    sizes = TINY if args.tiny else FULL
    torch.set_float32_matmul_precision("high")  # TF32 for what stays in fp32 (as nanoGPT's train.py)
    result = {
        **common.run_record(__file__, argv),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "sizes": sizes,
        "training": training(args, sizes, device),
        "generation": generation(args, sizes, device),
    }
    common.publish(
        "gpu", markdown(result), result, args.out, readme=args.write_readme and not args.tiny, heading=README_HEADING
    )
    return result


if __name__ == "__main__":
    main()
