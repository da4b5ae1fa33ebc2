"""``tfgraph-attention``: heatmaps of a model's attention over a text (a PNG per layer, a panel per head) and, for
each token, the tokens it attends to most.

    tfgraph-attention ckpt_path=<run dir>/checkpoints/last.ckpt text="time flies like an arrow"
    tfgraph-attention model=gpt2_tiny text="time flies like an arrow" layers=[0] out_dir=outputs/attention/random

A thin wrapper over :func:`tfgraph.inference.attention_from_config` (see ``conf/attention.yaml``). Exit codes as
``tfgraph-generate``'s.
"""

from __future__ import annotations

from omegaconf import DictConfig

from tfgraph.cli import command


def main() -> None:
    """The console script: compose the ``attention`` config from the command line and print the report."""

    @command("attention")
    def run(cfg: DictConfig) -> None:
        from tfgraph.inference import attention_from_config

        print(attention_from_config(cfg))

    run()


if __name__ == "__main__":
    main()
