"""``tfgraph-prepare``: prepare a data config ahead of training, and say where it went.

    tfgraph-prepare data=text data.path='/corpus/*.txt' data.tokenizer=bpe
    tfgraph-prepare data=shakespeare_char data.cache_dir=/shared/tfgraph

Reads the data once as a stream, trains the tokenizer, writes every split's token ids into memory-mapped files
(:mod:`tfgraph.data.store`) and prints the folder, the token counts and its size. A training run (or every rank
of one, or every job of a sweep) with the same data settings and ``data.cache_dir`` opens that folder instead of
reading the data again; a changed file or setting prepares it anew.

Exit codes: 0 on success, 2 for a :class:`tfgraph.ConfigError` or a data error (printed as ``error: ...``).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from tfgraph.cli import command
from tfgraph.config import plain
from tfgraph.data import store
from tfgraph.run_data import absolute_paths, build_datamodule


def prepare(cfg: DictConfig) -> dict[str, Any]:
    """Prepare ``cfg.data`` (or find it prepared), as a training run would.

    Returns:
        ``{"folder", "tokens": {split: n}, "examples": {split: n}, "bytes", "vocab_size"}``.
    """
    datamodule = build_datamodule(absolute_paths(plain(cfg.data)))
    folder, meta = datamodule.prepare_and_open()
    return {
        "folder": str(folder),
        "tokens": meta["tokens"],
        "examples": meta["examples"],
        "bytes": store.folder_size(folder),
        "vocab_size": datamodule.tokenizer.vocab_size,
    }


def report(result: dict[str, Any]) -> str:
    """The lines ``tfgraph-prepare`` prints."""
    tokens = ", ".join(f"{split} {n:,}" for split, n in result["tokens"].items())
    examples = ", ".join(f"{split} {n:,}" for split, n in result["examples"].items())
    return "\n".join(
        [
            f"prepared: {result['folder']}",
            f"tokens: {sum(result['tokens'].values()):,} ({tokens}); vocab_size: {result['vocab_size']}",
            f"examples: {examples}",
            f"size: {result['bytes'] / 2**20:.1f} MiB",
        ]
    )


def main() -> None:
    """The console script: compose the ``prepare`` config from the command line and prepare its data."""

    @command("prepare")
    def run(cfg: DictConfig) -> None:
        print(report(prepare(cfg)))

    run()


if __name__ == "__main__":
    main()
