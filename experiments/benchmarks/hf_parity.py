"""Parity of tfgraph's Hugging Face import and export with ``transformers``, one row per family and variant.

Each reference is a small ``transformers`` model built from a random config in code (nothing is downloaded), its
weights drawn large (not HF's 0.02 init) so that a wrong mask, position or scale shows. Each is saved with
``save_pretrained`` to a temporary directory and imported with ``tfgraph.from_hf``; then, in float32:

- logits (hidden states for BERT) on a batch with right padding, compared at the valid positions;
- greedy generation with tfgraph's KV cache against ``transformers``' ``generate``: identical tokens?
- ``tfgraph.to_hf`` of the imported model, reloaded by ``transformers``: its logits against the original's.

    python experiments/benchmarks/hf_parity.py                  # prints the table
    python experiments/benchmarks/hf_parity.py --write-readme   # and writes it into experiments/README.md

``tests/test_hf_interop.py`` runs the same :func:`parity` on every reference and holds it to 1e-4.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

VOCAB = 96
PROMPT, NEW_TOKENS = 6, 12  # generation: prompt length and new tokens (past Mistral's window of 4)


# the small sizes every reference shares (unless it sets its own), and the names each transformers config gives them
SIZES = {"d_model": 48, "n_layers": 2, "n_heads": 4, "d_ff": 96, "max_len": 64}
LLAMA_NAMES = {
    "d_model": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "d_ff": "intermediate_size",
    "max_len": "max_position_embeddings",
}  # Llama's, Mistral's, Qwen's, GPT-NeoX's and BERT's
GPT2_NAMES = {"d_model": "n_embd", "n_layers": "n_layer", "n_heads": "n_head", "max_len": "n_positions"}
T5_NAMES = {"d_model": "d_model", "n_layers": "num_layers", "n_heads": "num_heads", "d_ff": "d_ff"}
BART_NAMES = {
    "d_model": "d_model",
    "n_layers": ("encoder_layers", "decoder_layers"),
    "n_heads": ("encoder_attention_heads", "decoder_attention_heads"),
    "d_ff": ("encoder_ffn_dim", "decoder_ffn_dim"),
    "max_len": "max_position_embeddings",
}


def _small(config_class: type, names: dict[str, str | tuple[str, ...]], **settings: Any) -> Any:
    """A ``transformers`` config of the shared small sizes (:data:`SIZES`, under ``names``: size -> the config's
    name or names for it) and vocabulary :data:`VOCAB`, then ``settings``, which may set a size of their own."""
    sizes = {}
    for size, theirs in names.items():
        for name in (theirs,) if isinstance(theirs, str) else theirs:
            sizes[name] = SIZES[size]
    return config_class(**{**sizes, "vocab_size": VOCAB, **settings})


def _references() -> dict[str, Callable[[], Any]]:
    import transformers as T

    return {
        "gpt2": lambda: T.GPT2LMHeadModel(_small(T.GPT2Config, GPT2_NAMES)),
        "llama-3.2 (GQA, llama3 rope scaling, tied)": lambda: T.LlamaForCausalLM(
            _small(
                T.LlamaConfig,
                LLAMA_NAMES,
                num_key_value_heads=2,
                tie_word_embeddings=True,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8,
                },
            )
        ),
        "llama-2 (MHA, untied)": lambda: T.LlamaForCausalLM(_small(T.LlamaConfig, LLAMA_NAMES)),
        "llama (head_dim 16, yarn)": lambda: T.LlamaForCausalLM(
            _small(
                T.LlamaConfig,
                LLAMA_NAMES,
                num_key_value_heads=1,
                head_dim=16,
                rope_parameters={
                    "rope_type": "yarn",
                    "rope_theta": 10000.0,
                    "factor": 4.0,
                    "original_max_position_embeddings": 16,
                },
            )
        ),
        "mistral (sliding window 4)": lambda: T.MistralForCausalLM(
            _small(T.MistralConfig, LLAMA_NAMES, num_key_value_heads=2, sliding_window=4)
        ),
        "qwen2 (q/k/v bias)": lambda: T.Qwen2ForCausalLM(_small(T.Qwen2Config, LLAMA_NAMES, num_key_value_heads=2)),
        "qwen3 (qk-norm, head_dim 16)": lambda: T.Qwen3ForCausalLM(
            _small(T.Qwen3Config, LLAMA_NAMES, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5)
        ),
        "gpt-neox (partial rotary, parallel)": lambda: T.GPTNeoXForCausalLM(
            _small(T.GPTNeoXConfig, LLAMA_NAMES, hidden_size=64)
        ),
        "gpt-neox (sequential residual)": lambda: T.GPTNeoXForCausalLM(
            _small(T.GPTNeoXConfig, LLAMA_NAMES, use_parallel_residual=False, rotary_pct=0.5)
        ),
        "bert (token types)": lambda: T.BertModel(_small(T.BertConfig, LLAMA_NAMES, type_vocab_size=2)),
        "t5 v1.0 (relu)": lambda: T.T5ForConditionalGeneration(
            _small(
                T.T5Config,
                T5_NAMES,
                d_kv=12,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=20,
            )
        ),
        "t5 v1.1 (gated-gelu, no rescale)": lambda: T.T5ForConditionalGeneration(
            _small(T.T5Config, T5_NAMES, d_kv=8, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
        ),
        "bart": lambda: T.BartForConditionalGeneration(_small(T.BartConfig, BART_NAMES, scale_embedding=True)),
    }


def references() -> dict[str, Callable[[], Any]]:
    """The reference models: name -> a builder of a fresh ``transformers`` model with large random weights."""
    return {name: (lambda build=build: _enlarged(build())) for name, build in _references().items()}


def _enlarged(model: Any) -> Any:
    """Weights drawn large enough that a wrong mask, position or scale changes the logits visibly."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name.lower() or "ln_" in name):
                p.copy_(torch.rand(p.shape, generator=generator) + 0.5)
            elif p.dim() > 1 and p.shape[0] == VOCAB:  # token tables: tokens apart, so greedy paths vary
                p.copy_(torch.randn(p.shape, generator=generator))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * (0.3 if p.dim() > 1 else 0.1))
    return model.eval()


def _inputs(topology: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (3, 14), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    mask[2, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if topology == "encoder_decoder":
        batch["decoder_input_ids"] = torch.randint(3, VOCAB, (3, 9), generator=generator)
    if topology == "encoder_only":
        batch["token_type_ids"] = (torch.arange(14) >= 7).long().expand(3, -1)
    return batch


def _hf_output(hf: Any, batch: dict[str, torch.Tensor], topology: str) -> torch.Tensor:
    with torch.no_grad():
        out = hf(**batch)
    return out.last_hidden_state if topology == "encoder_only" else out.logits


def _our_output(model: Any, batch: dict[str, torch.Tensor], topology: str) -> torch.Tensor:
    with torch.no_grad():
        if topology == "encoder_decoder":
            return model(batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"])
        if topology == "encoder_only":
            return model(batch["input_ids"], batch["attention_mask"], token_type_ids=batch["token_type_ids"])
        return model(batch["input_ids"], batch["attention_mask"])


def _valid(batch: dict[str, torch.Tensor], topology: str) -> torch.Tensor:
    if topology == "encoder_decoder":  # the decoder's positions, all real here
        return torch.ones(batch["decoder_input_ids"].shape, dtype=torch.bool)
    return batch["attention_mask"].bool()


def _generation(hf: Any, model: Any, topology: str) -> tuple[bool | None, float | None]:
    """Whether the greedy tokens of tfgraph's cached generation equal transformers' ``generate``'s, and the largest
    difference of the logits of each step (``(None, None)``: not generative)."""
    from transformers import GenerationConfig

    from tfgraph.decoding import generate

    if topology == "encoder_only":
        return None, None
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(3, VOCAB, (2, PROMPT), generator=generator)
    start = 0 if topology == "encoder_decoder" else None
    config = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, eos_token_id=None,
        pad_token_id=0, decoder_start_token_id=start, forced_bos_token_id=None, forced_eos_token_id=None,
    )  # fmt: skip
    hf.generation_config = config  # replaced, not merged: BART's own forces its eos at the last step
    with torch.no_grad():
        theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), return_dict_in_generate=True, output_logits=True)
    tokens = theirs.sequences[:, PROMPT:] if topology == "decoder_only" else theirs.sequences[:, 1:]  # (1: the start)
    ours = generate(
        model, ids, max_new_tokens=NEW_TOKENS, strategy="greedy", decoder_start_token_id=start, output_logits=True
    )
    steps = torch.stack(theirs.logits, dim=1)  # [B, N, vocab], before any processing
    return bool(torch.equal(ours.sequences, tokens)), (ours.logits - steps).abs().max().item()


def parity(name: str, build: Callable[[], Any]) -> dict[str, Any]:
    """One reference's row: the largest logit difference on import, whether generation is identical, and the
    largest logit difference after exporting back to ``transformers``."""
    import tfgraph

    hf = build()
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        hf.save_pretrained(first)
        model, model_cfg = tfgraph.from_hf(first)
        topology = model_cfg["topology"]
        batch = _inputs(topology)
        valid = _valid(batch, topology)
        reference = _hf_output(hf, batch, topology)
        imported = (_our_output(model, batch, topology) - reference)[valid].abs().max().item()
        identical, step_diff = _generation(hf, model, topology)
        tfgraph.to_hf(model, model_cfg, second)
        again = type(hf).from_pretrained(second).eval()
        exported = (_hf_output(again, batch, topology) - reference)[valid].abs().max().item()
    return {
        "name": name,
        "architecture": type(hf).__name__,
        "scale": reference[valid].abs().max().item(),
        "import_diff": imported,
        "generation_identical": identical,
        "step_diff": step_diff,
        "export_diff": exported,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| family | transformers class | max abs logit | max diff, imported | greedy tokens identical | max diff, "
        "logits of each cached step | max diff, exported and reloaded |",
        "| --- | --- | ---: | ---: | :---: | ---: | ---: |",
    ]
    for r in rows:
        same = {True: "yes", False: "**no**", None: "n/a (encoder)"}[r["generation_identical"]]
        step = "n/a" if r["step_diff"] is None else f"{r['step_diff']:.1e}"
        lines.append(
            f"| {r['name']} | {r['architecture']} | {r['scale']:.2f} | {r['import_diff']:.1e} | {same} | {step} | "
            f"{r['export_diff']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-readme", action="store_true", help="write the table into experiments/README.md")
    args = parser.parse_args()
    import transformers
    from common import environment, write_readme

    torch.manual_seed(0)
    rows = [parity(name, build) for name, build in references().items()]
    env = environment()
    text = (
        f"{table(rows)}\n\nfloat32 on {env['cpu']}, torch {env['torch']}, transformers {transformers.__version__}; "
        "logits (BERT: hidden states) over a batch of 3 with right padding, at the valid positions; generation: "
        f"{NEW_TOKENS} greedy tokens after a {PROMPT}-token prompt. Command: "
        "`python experiments/benchmarks/hf_parity.py --write-readme`."
    )
    print(text)
    if args.write_readme:
        write_readme(
            "hf_parity",
            text,
            "## Hugging Face parity\n\nImported with `tfgraph.from_hf`, exported with `tfgraph.to_hf`, against "
            "`transformers` on small models with random weights (see experiments/benchmarks/hf_parity.py).\n",
        )


if __name__ == "__main__":
    main()
