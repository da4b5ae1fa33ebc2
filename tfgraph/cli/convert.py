"""``tfgraph-convert``: Hugging Face checkpoints in and out (:mod:`tfgraph.interop`).

    tfgraph-convert from_hf=path/to/hf_model out=imported/       # imported/model.ckpt, imported/model/hf_<type>.yaml
    tfgraph-convert ckpt_path=<run dir>/checkpoints/last.ckpt to_hf=exported/

Exit codes: 0 on success, 2 for a :class:`tfgraph.ConfigError` (an architecture or setting tfgraph does not map, a
tensor that does not fit, a file that is not what it says), printed as ``error: ...`` with no traceback.
"""

from __future__ import annotations

from omegaconf import DictConfig

from tfgraph.cli import command
from tfgraph.convert import convert


def main() -> None:
    """The console script: compose the ``convert`` config from the command line and run :func:`convert`."""

    @command("convert")
    def run(cfg: DictConfig) -> None:
        for line in convert(cfg):
            print(line)

    run()


if __name__ == "__main__":
    main()
