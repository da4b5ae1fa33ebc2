"""``tfgraph-check``: the equivalence checks of a composed model (:func:`tfgraph.checks.check`), as a table.

    tfgraph-check model=llama_tiny model/layer=parallel
    tfgraph-check -cd my_configs model=my_model plugins=[my_blocks] check.json=check.json

Exit codes: 0 when every check passed or was skipped, 1 when one failed (after the table), 2 for a
:class:`tfgraph.ConfigError` (printed as ``error: ...``, no traceback).
"""

from __future__ import annotations

from omegaconf import DictConfig

from tfgraph.checks import ChecksFailed, check
from tfgraph.cli import command


def main() -> None:
    """The console script: compose the ``check`` config from the command line, print the report, and exit 1
    when a check failed."""

    @command("check", exit_codes={ChecksFailed: 1})
    def run(cfg: DictConfig) -> None:
        report = check(cfg)
        print(report)
        if not report.ok:
            raise ChecksFailed(report)

    run()


if __name__ == "__main__":
    main()
