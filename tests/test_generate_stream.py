"""tfgraph.generate(..., stream=True) prints the text as it comes and ends its line."""

from __future__ import annotations

import pytest
import torch

import tfgraph
from tfgraph.data import build_tokenizer


def test_a_streamed_text_is_printed_whole_and_ends_with_a_newline(capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer = build_tokenizer("char", ["abc de"])
    torch.manual_seed(0)
    cfg = tfgraph.compose(["model=gpt2_tiny", "model.n_layers=1", f"model.vocab_size={tokenizer.vocab_size}"])
    model = tfgraph.build_model(cfg.model).eval()
    text = tfgraph.generate(model, "ab", tokenizer=tokenizer, max_new_tokens=8, stream=True)
    assert capsys.readouterr().out == text + "\n"
    tfgraph.generate(model, "ab", tokenizer=tokenizer, max_new_tokens=8)
    assert capsys.readouterr().out == ""  # without stream nothing is printed
