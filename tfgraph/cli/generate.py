"""``tfgraph-generate``: generate text from a checkpoint alone (a causal LM continues the prompt, a seq2seq model
translates it).

    tfgraph-generate ckpt_path=<run dir>/checkpoints/last.ckpt prompt=Romeo. strategy=sample top_p=0.9 seed=0
    tfgraph-generate ckpt_path=... prompt=hello strategy=beam num_beams=4 num_return_sequences=3
    tfgraph-generate ckpt_path=... prompt_file=sources.txt

A thin wrapper over :func:`tfgraph.inference.generate_from_config` (see ``conf/generate.yaml``); every setting is
checked before the checkpoint is loaded. Exit codes: 0 on success, 2 for a :class:`tfgraph.ConfigError`, an
option, key or override Hydra cannot compose included (printed as ``error: ...``, no traceback).
"""

from __future__ import annotations

from omegaconf import DictConfig

from tfgraph.cli import command


def main() -> None:
    """The console script: compose the ``generate`` config from the command line and generate."""

    @command("generate")
    def run(cfg: DictConfig) -> None:
        from tfgraph.inference import generate_from_config

        generate_from_config(cfg)

    run()


if __name__ == "__main__":
    main()
