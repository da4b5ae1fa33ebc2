"""``tfgraph-generate``: generate text from a checkpoint alone (a causal LM continues the prompt, a seq2seq model
translates it).

    tfgraph-generate ckpt_path=<run dir>/checkpoints/last.ckpt prompt="ROMEO:" strategy=sample top_p=0.9 seed=0
    tfgraph-generate ckpt_path=... prompt=hello strategy=beam num_beams=4 num_return_sequences=3
    tfgraph-generate ckpt_path=... prompt_file=sources.txt

A thin wrapper over :func:`tfgraph.inference.generate_from_config` (see ``conf/generate.yaml``). Exit codes: 0 on
success, 1 when Hydra cannot compose the config (an unknown key, say), 2 for a :class:`tfgraph.ConfigError`
(printed as ``error: ...``, no traceback).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from tfgraph.cli import exit_on_config_error
from tfgraph.config import conf_dir


def main() -> None:
    """The console script: compose the ``generate`` config from the command line and generate."""

    @hydra.main(config_path=str(conf_dir()), config_name="generate", version_base="1.3")
    def run(cfg: DictConfig) -> None:
        from tfgraph.inference import generate_from_config

        exit_on_config_error(lambda: generate_from_config(cfg))

    run()


if __name__ == "__main__":
    main()
