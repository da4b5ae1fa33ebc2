"""The one error type of the data layer."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class DataError(ValueError):
    """Malformed or missing data: names the file and line where there is one (``path:LINE: what was expected``)."""


def at(path: str | Path, line: int | None, message: str) -> DataError:
    """A :class:`DataError` located at ``path:line`` (or just ``path`` when ``line`` is None)."""
    where = f"{path}:{line}" if line is not None else str(path)
    return DataError(f"{where}: {message}")


def check_choice(what: str, value: str, choices: Iterable[str]) -> None:
    """Raise a :class:`DataError` naming the choices (and the close ones) when ``value`` is not one of them."""
    choices = list(choices)
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise DataError(f"unknown {what} {value!r}; expected one of {', '.join(map(repr, choices))}{hint}")
