"""Shared helpers for the test suite."""

from __future__ import annotations

import shutil

import pytest
import torch

import tfgraph
from tfgraph.config import conf_dir

TINY_PRESETS = ("gpt2_tiny", "llama_tiny", "bert_tiny", "t5_tiny", "transformer_tiny")
FULL_PRESETS = ("gpt2", "llama", "bert", "t5", "transformer")
SWAPPABLE_GROUPS = ("attention", "position", "norm", "ffn", "layer")

# Graphviz is a system program, not a Python package: a test that renders svg or png skips where it is missing.
needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None, reason="needs Graphviz's `dot` on PATH (apt-get install graphviz)"
)


def group_options(group: str) -> list[str]:
    """Every option of a swappable group, as found in conf/model/<group>/ (new options are tested too)."""
    return sorted(p.stem for p in (conf_dir() / "model" / group).glob("*.yaml"))


def build(overrides: list[str], seed: int = 0) -> tfgraph.models.Transformer:
    torch.manual_seed(seed)
    model = tfgraph.build_model(tfgraph.compose(overrides).model)
    return model.eval()


def run(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor | None = None,
    dec: torch.Tensor | None = None,
    dec_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The model call for any topology (encoder-decoders decode `dec`, default: the inputs themselves)."""
    if model.topology == "encoder_decoder":
        dec = ids if dec is None else dec
        return model(ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    return model(ids, attention_mask=mask)
