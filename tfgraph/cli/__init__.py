"""Command-line entry points: thin ``@hydra.main`` wrappers over pure functions (``tfgraph.show.show``, ...)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from tfgraph.registry import ConfigError

T = TypeVar("T")


def exit_on_config_error(function: Callable[[], T]) -> T:
    """``function()``; a :class:`tfgraph.ConfigError` becomes ``error: ...`` on stderr and exit code 2 (no traceback)."""
    try:
        return function()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
