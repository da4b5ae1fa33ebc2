"""``tfgraph-show``: print a model as a tree with parameters and FLOPs per node, or draw it with Graphviz.

    tfgraph-show model=gpt2
    tfgraph-show model=llama_tiny model/ffn=moe model/layer=parallel
    tfgraph-show model=t5_tiny format=svg out=t5.svg

Exit codes: 0 on success, 1 when Graphviz is missing for svg/png, 2 for a :class:`tfgraph.ConfigError`, an
option, key or override Hydra cannot compose included (printed as ``error: ...``, no traceback).
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tfgraph.cli import command
from tfgraph.show import GraphvizMissing, show


def main() -> None:
    """The console script: compose the ``show`` config from the command line and print what :func:`show` returns."""

    @command("show", exit_codes={GraphvizMissing: 1})
    def run(cfg: DictConfig) -> None:
        print(show(cfg, name=HydraConfig.get().runtime.choices.get("model")))

    run()


if __name__ == "__main__":
    main()
