"""The errors of the data layer: :class:`DataError` for the data, :class:`DataConfigError` for its config."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

from tfgraph.registry import ConfigError


class DataError(ValueError):
    """Malformed or missing data: names the file and line where there is one (``path:LINE: what was expected``)."""


class DataConfigError(ConfigError, DataError):
    """Mistakes in a data config, each at its key (``data.batch_size: expected a positive whole number, got 0``).

    A :class:`tfgraph.ConfigError` (it carries ``problems``, every one found) that is also a :class:`DataError`,
    so that whoever catches either of the two catches it.
    """


def at(path: str | Path, line: int | None, message: str) -> DataError:
    """A :class:`DataError` located at ``path:line`` (or just ``path`` when ``line`` is None)."""
    where = f"{path}:{line}" if line is not None else str(path)
    return DataError(f"{where}: {message}")


def choice_problem(what: str, value: object, choices: Iterable[str]) -> str | None:
    """``unknown tokenizer 'bpee': did you mean 'bpe'? expected one of ...`` when ``value`` is not a choice."""
    choices = list(choices)
    if isinstance(value, str) and value in choices:
        return None
    known = ", ".join(map(repr, choices))
    if value is None or value == "???":  # not set (``???``: OmegaConf's mandatory value)
        return f"missing: choose the {what}, one of {known}"
    close = difflib.get_close_matches(str(value), choices, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"unknown {what} {value!r}: {hint}expected one of {known}"


def check_choice(what: str, value: str, choices: Iterable[str]) -> None:
    """Raise a :class:`DataError` naming the choices (and the close ones) when ``value`` is not one of them."""
    problem = choice_problem(what, value, choices)
    if problem is not None:
        raise DataError(problem)
