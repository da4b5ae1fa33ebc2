"""Shared helpers for the test suite."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import tfgraph
from tfgraph.checks.base import call as run  # noqa: F401 (the model call for any topology, as the checks make it)
from tfgraph.config import conf_dir

TINY_PRESETS = ("gpt2_tiny", "llama_tiny", "bert_tiny", "t5_tiny", "transformer_tiny")
FULL_PRESETS = ("gpt2", "llama", "bert", "t5", "transformer")
SWAPPABLE_GROUPS = ("attention", "position", "norm", "ffn", "layer")

# Graphviz is a system program, not a Python package: a test that renders svg or png skips where it is missing.
needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None, reason="needs Graphviz's `dot` on PATH (apt-get install graphviz)"
)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, and on a shared machine a second thread waits for a free core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_text_run(folder: Path) -> list[str]:
    """The overrides of a run of a 1-layer gpt2_tiny on a small text written to ``folder`` (its data cache there
    too), on the CPU, without a progress bar, loggers, test or sample; the steps and the run dir are the caller's."""
    (folder / "book.txt").write_text("to be or not to be, that is the question.\n" * 40)
    return [
        "model=gpt2_tiny",
        "model.n_layers=1",
        "data=text",
        f"data.path={folder / 'book.txt'}",
        "data.tokenizer=char",
        f"data.cache_dir={folder / 'cache'}",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
        "trainer.limit_val_batches=1",
        "test=false",
        "sample.max_new_tokens=0",
        "~logger",
    ]


def group_options(group: str) -> list[str]:
    """Every option of a swappable group, as found in conf/model/<group>/ (new options are tested too)."""
    return sorted(p.stem for p in (conf_dir() / "model" / group).glob("*.yaml"))


def build(overrides: list[str], seed: int = 0) -> tfgraph.models.Transformer:
    torch.manual_seed(seed)
    model = tfgraph.build_model(tfgraph.compose(overrides).model)
    return model.eval()
