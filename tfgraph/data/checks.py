"""Checks of a data config and of what its data holds, kept apart from the code that reads the data.

Three moments, each with one entry point that the DataModules share:

- the settings, when a DataModule is built and before anything is read (:func:`check_settings`): every problem
  of the config at once, in one :class:`~tfgraph.data.errors.DataConfigError`, each at its key::

      data.batch_size: expected a positive whole number, got 0
      data.tokenizer: unknown tokenizer 'bpee': did you mean 'bpe'? expected one of 'byte', 'char', ...

- the files, when it is set up and before they are read (:func:`file_problems`)::

      data.val_path: dev.tsv: no such file

- what the files hold, as they are read: tags (:func:`tag_problem`, ``train.conll:2: tag 'X-PER' ...``) and a
  text's length against one window (:func:`check_windows`).

A rule (:data:`Rule`) takes a value and returns what is wrong with it, or None.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tfgraph.data.errors import DataConfigError, DataError, choice_problem
from tfgraph.data.tokenizers import KINDS, OPTIONS, SPECIAL_TOKENS
from tfgraph.registry import suggest

Rule = Callable[[Any], "str | None"]
PREFIX = "data."  # where the data config sits in a run's config
PATH_KEYS = ("path", "train_path", "val_path", "test_path")
SPECIALS = len(SPECIAL_TOKENS)
BYTE_VOCAB = SPECIALS + 256


# ------------------------------------------------------------------------------------------------ rules


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def whole_number(minimum: int | None, why: str = "", *, optional: bool = False) -> Rule:
    """A whole number of at least ``minimum`` (None: any), or also null when ``optional``; ``why`` the minimum's
    reason, said in the message."""
    if minimum == 1:
        expected = "a positive whole number"
    elif minimum == 0:
        expected = "a whole number, 0 or more"
    elif minimum is None:
        expected = "a whole number"
    else:
        expected = f"a whole number of at least {minimum}"
    expected = ("null or " if optional else "") + expected + (f" ({why})" if why else "")

    def check(value: Any) -> str | None:
        if (value is None and optional) or (_is_int(value) and (minimum is None or value >= minimum)):
            return None
        return f"expected {expected}, got {value!r}"

    return check


def share(value: Any) -> str | None:
    """A share of the data: a number in [0, 1)."""
    if (_is_int(value) or isinstance(value, float)) and 0 <= value < 1:
        return None
    return f"expected a share in [0, 1), got {value!r}"


def flag(value: Any) -> str | None:
    """true or false."""
    return None if isinstance(value, bool) else f"expected true or false, got {value!r}"


def text(what: str, *, optional: bool = True) -> Rule:
    """A non-empty string (``what`` it is), or also null when ``optional``."""
    expected = f"{what} or null" if optional else what

    def check(value: Any) -> str | None:
        if (value is None and optional) or (isinstance(value, str) and value):
            return None
        return f"expected {expected}, got {value!r}"

    return check


def one_of(what: str, choices: Sequence[str], *, optional: bool = False) -> Rule:
    """One of ``choices`` (``what`` they are: ``tokenizer``, ``text source``), or also null when ``optional``."""

    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        problem = choice_problem(what, value, choices)
        return problem + (" (or null)" if optional else "") if problem else None

    return check


def options(value: Any) -> str | None:
    """A mapping of named options, or null."""
    if value is None or isinstance(value, Mapping):
        return None
    return f"expected options as a mapping ({{name: value}}) or null, got {value!r}"


def names(value: Any) -> str | None:
    """A list of names (label names), or null."""
    if value is None or (isinstance(value, (list, tuple)) and value and all(isinstance(n, str) for n in value)):
        return None
    return f"expected a list of label names or null, got {value!r}"


def column(value: Any) -> str | None:
    """A column number: 0 the first, -1 the last."""
    return None if _is_int(value) else f"expected a column number (0: the first, -1: the last), got {value!r}"


def or_null(rule: Rule) -> Rule:
    """``rule``, or null (null's meaning is the key's default), with ``rule``'s message."""
    return lambda value: None if value is None else rule(value)


PATH = text("a path")
SHARED_RULES: dict[str, Rule] = {  # the keys every data config has
    "name": text("a name"),
    **{key: PATH for key in PATH_KEYS},
    "batch_size": whole_number(1),
    "num_workers": or_null(whole_number(0)),
    "pin_memory": or_null(flag),
    "cache_dir": text("a folder"),
    "seed": whole_number(0),
    "val_fraction": share,
    "test_fraction": share,
    "tokenizer": one_of("tokenizer", KINDS),
    "vocab_size": whole_number(SPECIALS + 1, f"more than the {SPECIALS} special tokens", optional=True),
    "tokenizer_opts": options,
    "tokenizer_sample": whole_number(1, "characters of the training split", optional=True),
    "tokenizer_json": text("a tokenizer's JSON"),
    "tokenizer_path": PATH,
    "label_names": names,
}
BLOCK_SIZE = whole_number(2, "a window holds a token and the one after it, which it predicts")
TOKENIZER_OPTION_RULES: dict[str, Rule] = {  # the tokenizers' options (which kind takes which: OPTIONS)
    "min_freq": whole_number(1),
    "lowercase": flag,
    "max_piece_length": whole_number(1),
}
SOURCE_OPTION_RULES: dict[str, Rule] = {  # the sources' options, by name (the synthetic tasks', the corpora's)
    "n_train": whole_number(1),
    "n_val": whole_number(0),
    "n_test": whole_number(0),
    "min_length": whole_number(1),
    "max_length": whole_number(1),
    "alphabet": text("the characters to draw from", optional=False),
    "source": text("a SWORD module's name", optional=False),
    "target": text("a SWORD module's name", optional=False),
    "sword_path": PATH,
    "cache_root": PATH,
    "lists_dir": PATH,
    "fetch": flag,
}


def option_names(function: Callable[..., Any], *fixed: str) -> tuple[str, ...]:
    """The keyword parameters of a source function that ``source_options`` may set (all but ``fixed``)."""
    return tuple(name for name in inspect.signature(function).parameters if name not in fixed)


# ------------------------------------------------------------------------------------- the settings


def check_settings(
    settings: Mapping[str, Any],
    rules: Mapping[str, Rule],
    source_options: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Raise one DataConfigError with every problem of a data config's settings, before any data is read.

    Args:
        settings: the DataModule's arguments by config key (``batch_size``, ``source``, ...).
        rules: the rule of each key (:data:`SHARED_RULES` and the DataModule's own).
        source_options: the options each source other than ``file`` takes (``source_options`` keys).
    """
    problems = [(PREFIX + key, message) for key, value in settings.items() if (message := _apply(rules, key, value))]
    problems += _combination_problems(settings, source_options or {}, {key for key, _ in problems})
    if problems:
        raise DataConfigError(problems)


def _apply(rules: Mapping[str, Rule], key: str, value: Any) -> str | None:
    rule = rules.get(key)
    return rule(value) if rule is not None else None


def _combination_problems(
    settings: Mapping[str, Any], source_options: Mapping[str, Sequence[str]], bad: set[str]
) -> list[tuple[str, str]]:
    """What is wrong with settings that are each fine alone (skipping those already found wrong, in ``bad``)."""
    problems: list[tuple[str, str]] = []

    def ok(key: str) -> bool:  # given, and fine on its own
        return key in settings and PREFIX + key not in bad

    if ok("val_fraction") and ok("test_fraction") and settings["val_fraction"] + settings["test_fraction"] >= 1:
        total = settings["val_fraction"] + settings["test_fraction"]
        problems.append(
            (
                PREFIX + "val_fraction",
                f"val_fraction {settings['val_fraction']} and test_fraction {settings['test_fraction']} hold out "
                f"{total:g} of the data, leaving nothing to train on: their sum must be under 1",
            )
        )
    if settings.get("tokenizer_json") is not None and settings.get("tokenizer_path") is not None:
        problems.append((PREFIX + "tokenizer_path", "give tokenizer_json or tokenizer_path, not both"))
    if ok("tokenizer") and ok("tokenizer_opts"):
        kind, given = settings["tokenizer"], dict(settings["tokenizer_opts"] or {})
        problems += _options_problems(
            "tokenizer_opts", f"the {kind} tokenizer", given, OPTIONS[kind], TOKENIZER_OPTION_RULES
        )
        if kind == "byte" and ok("vocab_size") and settings.get("vocab_size") not in (None, BYTE_VOCAB):
            problems.append(
                (
                    PREFIX + "vocab_size",
                    f"a byte tokenizer has {BYTE_VOCAB} ids; vocab_size={settings['vocab_size']} cannot apply "
                    "(leave it null)",
                )
            )
    if ok("source"):
        problems += _source_problems(settings, source_options, bad)
    return problems


def _options_problems(
    key: str, owner: str, given: Mapping[str, Any], allowed: Sequence[str], rules: Mapping[str, Rule]
) -> list[tuple[str, str]]:
    """Unknown options (at ``data.<key>``) and bad values (at ``data.<key>.<option>``, by ``rules``) of a mapping
    of options, of which ``owner`` takes the ``allowed``."""
    unknown = sorted(set(given) - set(allowed))
    problems = []
    if unknown:
        have = ", ".join(allowed) or "none"
        hints = "".join(suggest(name, allowed) for name in unknown)
        problems.append((PREFIX + key, f"unknown {key} {', '.join(unknown)}; its options: {have} (of {owner}){hints}"))
    for name, value in given.items():
        message = _apply(rules, name, value) if name in allowed else None
        if message:
            problems.append((f"{PREFIX}{key}.{name}", message))
    return problems


def _source_problems(
    settings: Mapping[str, Any], source_options: Mapping[str, Sequence[str]], bad: set[str]
) -> list[tuple[str, str]]:
    """Paths are for ``source: file`` only, ``source_options`` for the other sources only, and by name."""
    source, given = settings["source"], settings.get("source_options")
    if source == "file":
        if given and PREFIX + "source_options" not in bad:
            return [
                (
                    PREFIX + "source_options",
                    "source_options apply to the corpus and synthetic sources, not to files (source: file)",
                )
            ]
        return []
    problems = [
        (
            PREFIX + key,
            f"{key} given, but the data comes from source {source!r}, which brings its own splits: "
            f"leave data.{key} null, or read files with data.source=file",
        )
        for key in PATH_KEYS
        if settings.get(key)
    ]
    if given and PREFIX + "source_options" not in bad:
        allowed = source_options.get(source, ())
        problems += _options_problems("source_options", f"source {source!r}", given, allowed, SOURCE_OPTION_RULES)
    return problems


# ------------------------------------------------------------------------------------------- the files


def file_problems(
    paths: Mapping[str, Any], resolve: Callable[[Any], Any], *, what: str = "file"
) -> list[tuple[str, str]]:
    """The problems of a data config's files before they are read: no file, both ``path`` and ``train_path``,
    a file that is not there.

    Args:
        paths: ``path``, ``train_path``, ``val_path``, ``test_path`` (None where not given).
        resolve: raises a DataError naming the path when it names no data (``readers.check_file`` for one
            file, ``readers.expand_paths`` for a file, a folder or a glob).
        what: what a path may name, for the message.
    """
    if paths.get("path") is None and paths.get("train_path") is None:
        return [
            (
                PREFIX + "path",
                f"which file? give data.path=<{what}> (val and test held out of it), or data.train_path=<{what}> "
                "and optionally data.val_path, data.test_path: exactly one of data.path and data.train_path",
            )
        ]
    problems = []
    if paths.get("path") is not None and paths.get("train_path") is not None:
        problems.append(
            (
                PREFIX + "train_path",
                "data.path and data.train_path both given: give exactly one (data.path to hold val and test out "
                "of it, data.train_path to read them from data.val_path and data.test_path)",
            )
        )
    for key in PATH_KEYS:
        if paths.get(key) is not None:
            try:
                resolve(paths[key])
            except DataError as err:
                problems.append((PREFIX + key, str(err)))
    return problems


def tokenizer_file_problems(tokenizer_path: Any, resolve: Callable[[Any], Any]) -> list[tuple[str, str]]:
    """``data.tokenizer_path``: a file that is not there (``resolve`` raises a DataError for it)."""
    if tokenizer_path is None:
        return []
    try:
        resolve(tokenizer_path)
    except DataError as err:
        return [(PREFIX + "tokenizer_path", f"{err} (a run saves its tokenizer as tokenizer.json in its dir)")]
    return []


def raise_problems(problems: Sequence[tuple[str, str]]) -> None:
    """Raise a DataConfigError listing ``problems`` (``(config key, message)``), if there are any."""
    if problems:
        raise DataConfigError(list(problems))


# ------------------------------------------------------------------------------------- what data holds

TAG_PREFIXES = ("B", "I", "E", "S")
TAGS_EXPECTED = (
    "BIO tags are O, or B- or I- followed by the entity type (B-PER, I-PER); IOB1, IOE and BIOES tags "
    "(E-PER, S-PER) are read too"
)


def tag_problem(tag: str) -> str | None:
    """What is wrong with a token's tag, or None for a tag that entity-level F1 reads as its scheme means it.

    Accepted: ``O``; ``B-``, ``I-``, ``E-`` or ``S-`` and a non-empty entity type (``B-PER``, ``I-geo-loc``),
    which covers BIO (IOB2), IOB1, IOE and BIOES, the schemes whose prefixes seqeval's ``get_entities`` (the
    entity-level F1) tells apart. Refused: any other prefix (``X-PER``; ``L-``, ``U-`` of BILOU), a bare prefix
    (``I``) and a prefix without a type (``B-``).
    """
    if tag == "O":
        return None
    prefix, dash, kind = tag.partition("-")
    if prefix in TAG_PREFIXES and dash and kind:
        return None
    shown = repr(tag) if len(tag) <= 40 else f"{tag[:37]!r}... ({len(tag)} characters)"  # not a whole file's line
    if prefix in TAG_PREFIXES:
        return f"tag {shown} has no entity type: {TAGS_EXPECTED}"
    return f"tag {shown} is not a BIO tag: {TAGS_EXPECTED}"


def check_windows(tokens: Mapping[str, int], block_size: int, origins: Mapping[str, str], tokenizer: str) -> list[str]:
    """Refuse a training text too short for one window of ``block_size`` tokens; say which of val and test have
    no full window.

    Args:
        tokens: the token count of each split's stream (``<eos>`` after each text included); only the splits
            that were asked for (val and test where held out, or given their own file).
        block_size: tokens per window (``data.block_size``).
        origins: where each split comes from (a file, or a source), for the messages.
        tokenizer: the tokenizer's kind, for the messages.

    Returns:
        A note for each of val and test with no full window (evaluated on one shorter window, or not at all).

    Raises:
        DataError: the training split holds fewer than ``block_size`` tokens.
    """
    short = {split: tokens[split] for split in ("val", "test") if split in tokens and tokens[split] < block_size}
    n = tokens["train"]
    if n < block_size:
        fix = "give more text" + (f", or set data.block_size to at most {n}" if n >= 2 else "")
        also = ", ".join(f"{split} {count}" for split, count in short.items())
        raise DataError(
            f"{origins['train']}: the training split has {n} tokens ({tokenizer} tokenizer, an <eos> after each "
            f"text), fewer than one window of data.block_size={block_size}: {fix}"
            + (f" (tokens of the other splits: {also})" if also else "")
        )
    return [
        f"{origins[split]}: the {split} split has {count} tokens, under one window of data.block_size={block_size}: "
        + ("it is evaluated on one shorter window" if count else f"no {'validation' if split == 'val' else split}")
        for split, count in short.items()
    ]
