"""Synthetic sequence-to-sequence tasks for tests and smoke runs: copy, reverse, sort and addition.

Each task maps a random source string to its target::

    copy      "hello"  -> "hello"
    reverse   "hello"  -> "olleh"
    sort      "hello"  -> "ehllo"
    addition  "123+45" -> "168"

The splits are drawn from one seeded generator with no source repeated across or within them, so the
validation and test sources are never seen in training.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from tfgraph.data.errors import DataError, check_choice

TASKS: dict[str, Callable[[str], str]] = {
    "copy": lambda s: s,
    "reverse": lambda s: s[::-1],
    "sort": lambda s: "".join(sorted(s)),
    "addition": lambda s: str(sum(int(term) for term in s.split("+"))),
}
DEFAULT_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def _source(task: str, rng: random.Random, min_length: int, max_length: int, alphabet: str) -> str:
    if task == "addition":  # two numbers of min_length..max_length digits each, no leading zeros
        return "+".join(_number(rng, rng.randint(min_length, max_length)) for _ in range(2))
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(min_length, max_length)))


def _number(rng: random.Random, digits: int) -> str:
    low = 10 ** (digits - 1) if digits > 1 else 0
    return str(rng.randrange(low, 10**digits))


def synthetic_splits(
    task: str,
    *,
    n_train: int = 10000,
    n_val: int = 500,
    n_test: int = 500,
    min_length: int = 1,
    max_length: int = 16,
    alphabet: str = DEFAULT_ALPHABET,
    seed: int = 0,
) -> dict[str, list[tuple[str, str]]]:
    """Train, val and test pairs of a synthetic task, with distinct sources.

    Args:
        task: ``copy``, ``reverse``, ``sort`` or ``addition``.
        n_train: training pairs.
        n_val: validation pairs.
        n_test: test pairs.
        min_length: the shortest source (for addition: the fewest digits of each number).
        max_length: the longest source (for addition: the most digits of each number).
        alphabet: the source characters (not used by addition, whose sources are digits and ``+``).
        seed: the generator's seed.

    Returns:
        ``{"train": [(source, target), ...], "val": [...], "test": [...]}``.
    """
    check_choice("synthetic task", task, TASKS)
    if not 1 <= min_length <= max_length:
        raise DataError(f"synthetic {task}: need 1 <= min_length <= max_length, got {min_length}, {max_length}")
    if task != "addition" and not alphabet:
        raise DataError(f"synthetic {task}: the alphabet is empty")
    rng = random.Random(f"{task}:{seed}")
    wanted = n_train + n_val + n_test
    sources: dict[str, None] = {}  # insertion-ordered set
    for _ in range(20 * wanted + 100):
        if len(sources) == wanted:
            break
        sources[_source(task, rng, min_length, max_length, alphabet)] = None
    else:
        raise DataError(
            f"synthetic {task}: could draw only {len(sources)} distinct sources of {wanted} wanted; "
            "widen min_length..max_length or the alphabet, or ask for fewer pairs"
        )
    pairs = [(s, TASKS[task](s)) for s in sources]
    return {
        "train": pairs[:n_train],
        "val": pairs[n_train : n_train + n_val],
        "test": pairs[n_train + n_val :],
    }
