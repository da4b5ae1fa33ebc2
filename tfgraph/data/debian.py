"""Debian's English package descriptions as a summarization corpus: the synopsis is the summary, the long
description the document.

``apt-get -o Acquire::Languages=en update`` keeps one ``Translation-en`` list per archive component in
``/var/lib/apt/lists`` (compressed as the mirror serves it, ``.lz4`` or ``.xz`` or ...). Each stanza is::

    Package: 0xffff
    Description-md5: 183c49f6505eb3432d1b069800f1f5b6
    Description-en: Open Free Fiasco Firmware Flasher          <- the synopsis: the summary
     The 'Open Free Fiasco Firmware Flasher' aka 0xFFFF ...    <- the long description: the document
     .
     Supported operations currently include:
      * generating and unpacking FIASCO images on local device

The lists are streamed a line at a time through ``apt-helper cat-file``, which decompresses whatever apt
fetched (Python's own gzip, bz2 and lzma where there is no apt). A long description is unwrapped as Debian
Policy 5.6.13 lays it out (:func:`unwrap_description`). Entries whose long description is empty, or the same
text as an entry read before, are dropped. Related packages (``foo``, ``foo-dev``, ``python3-foo``,
``libfoo1``, and the binaries of one source package as the ``Packages`` lists name it) form one group
(:func:`group_packages`), and a group goes whole into train, val or test (:func:`split_of`), so that no
description is held out while a near copy of it trains.

The prepared pairs are cached under ``<cache root>/debian_descriptions`` (:func:`tfgraph.data.sources.cache_dir`),
keyed by the lists' paths, sizes and modification times: a second run reads the cache, and a new
``apt-get update`` makes a new one.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tfgraph.data import store
from tfgraph.data.errors import DataError

LISTS_DIR = "/var/lib/apt/lists"
APT_HELPER = "/usr/lib/apt/apt-helper"
UPDATE_COMMAND = "apt-get -o Acquire::Languages=en update"
# a list's name, compressed or not: ..._main_i18n_Translation-en.lz4, ..._main_binary-amd64_Packages.xz
TRANSLATION_NAME = re.compile(r"_Translation-en(\.[A-Za-z0-9]+)?$")
PACKAGES_NAME = re.compile(r"_Packages(\.[A-Za-z0-9]+)?$")
PYTHON_OPENERS = {"": open, ".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".lzma": lzma.open}
FORMAT = 1  # of the cache: raise it when the parsing or the grouping changes
CACHE_NAME = "debian_descriptions"
SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)

_BULLET = re.compile(r"^([*+\-o•·])\s+(\S.*)$")
# name parts that mark a sibling of a package (its headers, docs, data, bindings), stripped for its family
_PREFIXES = (
    "python3-",
    "python-",
    "pypy3-",
    "pypy-",
    "lib",
    "ruby-",
    "node-",
    "golang-",
    "r-cran-",
    "r-bioc-",
    "php-",
    "ghc-",
    "haskell-",
    "ocaml-",
    "gir1.2-",
    "elpa-",
    "fonts-",
    "xfonts-",
    "perl-",
    "lua-",
    "tcl-",
)
_SUFFIXES = (
    "-dev",
    "-doc",
    "-docs",
    "-dbg",
    "-dbgsym",
    "-data",
    "-common",
    "-bin",
    "-utils",
    "-tools",
    "-examples",
    "-perl",
    "-java",
    "-jni",
    "-cil",
    "-ocaml",
    "-prof",
    "-static",
    "-plugins",
    "-plugin",
    "-l10n",
    "-locales",
    "-i18n",
    "-runtime",
    "-headers",
    "-source",
    "-src",
    "-core",
    "-extra",
    "-dbus",
    "-gtk",
    "-qt",
    "-cli",
)
_VERSION = re.compile(r"[-.+]?\d[\d.+~]*[a-z]?(t64)?$")  # libfoo2.0-0, libbar1t64, foo-12


@dataclass(frozen=True)
class Description:
    """One stanza of a ``Translation-en`` list, its long description unwrapped.

    Attributes:
        package: the binary package's name.
        md5: its ``Description-md5`` (what the ``Packages`` lists name the description by).
        summary: the synopsis, whitespace collapsed.
        document: the long description as one line (:func:`unwrap_description`); empty when it has none.
    """

    package: str
    md5: str
    summary: str
    document: str


@dataclass
class Counts:
    """What each step of preparing the corpus read, dropped and kept (logged, and kept in the cache)."""

    lists: int = 0  # Translation-en lists read
    read: int = 0  # their stanzas
    dropped_empty: int = 0  # no long description (or no synopsis)
    dropped_duplicate: int = 0  # the long description of an entry read before
    duplicate_same_package: int = 0  # ... of which the same package, listed again (by another suite)
    kept: int = 0
    packages_lists: int = 0  # Packages lists read for the source packages
    with_source: int = 0  # kept entries whose package a Packages list names (with its source package)
    groups: int = 0  # groups of related packages among the kept entries
    largest_group: int = 0  # entries in the largest
    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # per split: entries and groups

    def lines(self) -> list[str]:
        """The counts as lines of a log."""
        out = [
            f"{self.lists} Translation-en lists: {self.read:,} entries read",
            f"dropped {self.dropped_empty:,} with an empty long description",
            f"dropped {self.dropped_duplicate:,} whose long description repeats an earlier entry's "
            f"({self.duplicate_same_package:,} of them the same package in another list)",
            f"kept {self.kept:,}; {self.with_source:,} of them with a source package from {self.packages_lists} "
            "Packages lists",
            f"{self.groups:,} groups of related packages (the largest {self.largest_group:,} entries)",
        ]
        out += [f"{split}: {n['entries']:,} entries in {n['groups']:,} groups" for split, n in self.splits.items()]
        return out


# ------------------------------------------------------------------------------------------------ reading


def find_lists(lists_dir: str | Path = LISTS_DIR) -> tuple[list[Path], list[Path]]:
    """The ``Translation-en`` lists and the ``Packages`` lists in ``lists_dir``, each in sorted path order.

    Raises:
        DataError: when there is no ``Translation-en`` list, saying which command brings them.
    """
    folder = Path(lists_dir).expanduser()
    files = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    translations = [p for p in files if TRANSLATION_NAME.search(p.name)]
    packages = [p for p in files if PACKAGES_NAME.search(p.name)]
    if not translations:
        where = f"{folder} has no *Translation-en* list" if folder.is_dir() else f"{folder}: no such folder"
        raise DataError(
            f"{where}: Debian's English package descriptions come with apt's lists; "
            f"bring them with `{UPDATE_COMMAND}` (as root)"
        )
    return translations, packages


@contextlib.contextmanager
def open_list(path: str | Path, *, apt_helper: str | None = APT_HELPER) -> Iterator[Iterator[str]]:
    """The lines of an apt list (without their ends), decompressed as they are read.

    ``apt-helper cat-file`` reads any compression apt fetches; without it (``apt_helper`` None or not
    installed), Python reads plain, ``.gz``, ``.bz2``, ``.xz`` and ``.lzma`` lists.

    Raises:
        DataError: when the list cannot be read (naming it, and what would read it).
    """
    path = Path(path)
    if apt_helper and Path(apt_helper).is_file():
        with subprocess.Popen(
            [apt_helper, "cat-file", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        ) as process:
            assert process.stdout is not None and process.stderr is not None
            yield (line.rstrip("\n") for line in process.stdout)
            process.stdout.read()  # drain what the caller left, so the helper is not stopped by a full pipe
            error = process.stderr.read()
        if process.returncode:
            raise DataError(f"{path}: `{apt_helper} cat-file` failed ({error.strip() or process.returncode})")
        return
    found = TRANSLATION_NAME.search(path.name) or PACKAGES_NAME.search(path.name)
    suffix = (found.group(1) or "") if found else path.suffix
    opener = PYTHON_OPENERS.get(suffix)
    if opener is None:
        raise DataError(f"{path}: a {suffix} list needs apt's {APT_HELPER} to decompress it (install apt)")
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        yield (line.rstrip("\n") for line in handle)


def iter_stanzas(lines: Iterable[str], fields: Sequence[str]) -> Iterator[dict[str, list[str]]]:
    """The stanzas of a deb822 file (blank-line separated ``Field: value`` paragraphs), one at a time.

    Args:
        lines: the file's lines, without their ends.
        fields: the fields to keep (the others are skipped as they are read).

    Yields:
        ``{field: [first line's value, continuation lines as they are (leading space kept)]}``.
    """
    wanted = set(fields)
    stanza: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if not line.strip():
            if stanza:
                yield stanza
            stanza, current = {}, None
        elif line[0] in " \t":
            if current is not None:
                current.append(line)
        else:
            name, _, value = line.partition(":")
            current = [value.strip()] if name in wanted else None
            if current is not None:
                stanza[name] = current
    if stanza:
        yield stanza


def unwrap_description(lines: Sequence[str]) -> str:
    """A long description (its continuation lines, each starting with a space) as one line of plain text.

    As Debian Policy 5.6.13 lays it out: a line of one leading space is wrapped text, joined to the lines
    around it; `` .`` breaks paragraphs; a line of two or more leading spaces is shown verbatim. A bullet
    (``*``, ``-``, ``+``, ``o``) starts a list item, written ``* item``, and lines indented under it continue
    it. Paragraphs, items and verbatim lines are joined by one space, and runs of whitespace collapse.

    Args:
        lines: the long description's lines (leading space included), without the synopsis.
    """
    blocks: list[list[str]] = []
    item_indent: int | None = None  # the indent of the open list item's bullet, if one is open
    open_paragraph = False

    def start(words: str, *, item: bool = False) -> None:
        blocks.append(["*", words] if item else [words])

    for raw in lines:
        body = raw[1:] if raw.startswith(" ") else raw
        text = body.strip()
        if not text or text == ".":
            item_indent, open_paragraph = None, False
            continue
        indent = len(body) - len(body.lstrip())
        bullet = _BULLET.match(text)
        if bullet:
            start(bullet.group(2), item=True)
            item_indent, open_paragraph = indent, False
        elif item_indent is not None and (indent > item_indent or indent == 0 and item_indent == 0):
            blocks[-1].append(text)  # an item's continuation (deeper, or wrapped text after a one-space bullet)
        elif indent == 0:
            if open_paragraph:
                blocks[-1].append(text)
            else:
                start(text)
            item_indent, open_paragraph = None, True
        else:  # a verbatim line of its own
            start(text)
            item_indent, open_paragraph = None, False
    return " ".join(" ".join(" ".join(block).split()) for block in blocks)


def read_descriptions(path: str | Path, *, apt_helper: str | None = APT_HELPER) -> Iterator[Description]:
    """The entries of one ``Translation-en`` list, in its order, streamed."""
    with open_list(path, apt_helper=apt_helper) as lines:
        for stanza in iter_stanzas(lines, ("Package", "Description-md5", "Description-en")):
            package = stanza.get("Package", [""])[0]
            description = stanza.get("Description-en")
            if not package:
                continue
            summary = " ".join(description[0].split()) if description else ""
            document = unwrap_description(description[1:]) if description else ""
            yield Description(package, stanza.get("Description-md5", [""])[0], summary, document)


def read_sources(paths: Iterable[str | Path], *, apt_helper: str | None = APT_HELPER) -> dict[str, str]:
    """``{binary package: source package}`` from ``Packages`` lists (``Source: foo (1.2-3)`` is ``foo``; a
    stanza without ``Source`` is its own source, as Debian Policy says)."""
    sources: dict[str, str] = {}
    for path in paths:
        with open_list(path, apt_helper=apt_helper) as lines:
            for stanza in iter_stanzas(lines, ("Package", "Source")):
                package = stanza.get("Package", [""])[0]
                if package:
                    source = stanza.get("Source", [package])[0].split(" ")[0] or package
                    sources.setdefault(package, source)
    return sources


# ------------------------------------------------------------------------------------------ groups, splits


def family(package: str) -> str:
    """The name a package shares with its siblings: ``python3-foo``, ``libfoo1``, ``libfoo-dev``, ``foo-doc``
    and ``foo`` are all ``foo`` (language prefixes, sibling suffixes and a trailing version or soname are cut,
    as long as something is left)."""
    name = package.lower()
    changed = True
    while changed:
        changed = False
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix) + 1:
                name, changed = name[: -len(suffix)], True
        for prefix in _PREFIXES:
            if name.startswith(prefix) and len(name) > len(prefix) + 1:
                name, changed = name[len(prefix) :], True
        cut = _VERSION.sub("", name)
        if cut != name and len(cut) > 1:
            name, changed = cut, True
    return name


def group_packages(packages: Iterable[str], sources: dict[str, str]) -> dict[str, str]:
    """Each package's group: packages of one :func:`family` or one source package are joined, transitively.

    Returns:
        ``{package: group}``, the group named by its alphabetically first package.
    """
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def join(a: str, b: str) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    names = sorted(set(packages))
    for package in names:
        join("p:" + package, "f:" + family(package))
        if package in sources:
            join("p:" + package, "s:" + sources[package])
    members: dict[str, list[str]] = {}
    for package in names:
        members.setdefault(root("p:" + package), []).append(package)
    return {package: group[0] for group in members.values() for package in group}


def split_of(group: str, *, seed: int, val_fraction: float, test_fraction: float) -> str:
    """``train``, ``val`` or ``test`` for a group, from a hash of the group's name and ``seed``: the same on
    every machine and run, and a group keeps its split when other groups come or go."""
    digest = hashlib.sha256(f"{seed}\0{group}".encode()).digest()
    share = int.from_bytes(digest[:8], "big") / 2**64
    if share < val_fraction:
        return "val"
    return "test" if share < val_fraction + test_fraction else "train"


# ----------------------------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Entry:
    """A kept description: its package, the package's group, the document and the summary."""

    package: str
    group: str
    document: str
    summary: str


def prepare(
    translations: Sequence[Path], packages: Sequence[Path], *, apt_helper: str | None = APT_HELPER
) -> tuple[list[Entry], Counts]:
    """Read the lists, unwrap, drop empty and repeated descriptions, and group the rest (no split yet)."""
    counts = Counts(lists=len(translations), packages_lists=len(packages))
    seen: dict[str, str] = {}  # the md5 of each kept document -> its package
    kept: list[Description] = []
    for path in translations:
        for entry in read_descriptions(path, apt_helper=apt_helper):
            counts.read += 1
            if not entry.document or not entry.summary:
                counts.dropped_empty += 1
                continue
            key = hashlib.md5(entry.document.encode()).hexdigest()
            if key in seen:
                counts.dropped_duplicate += 1
                counts.duplicate_same_package += seen[key] == entry.package
                continue
            seen[key] = entry.package
            kept.append(entry)
    sources = read_sources(packages, apt_helper=apt_helper)
    groups = group_packages((e.package for e in kept), sources)
    counts.kept = len(kept)
    counts.with_source = sum(e.package in sources for e in kept)
    sizes: dict[str, int] = {}
    for e in kept:
        sizes[groups[e.package]] = sizes.get(groups[e.package], 0) + 1
    counts.groups, counts.largest_group = len(sizes), max(sizes.values(), default=0)
    return [Entry(e.package, groups[e.package], e.document, e.summary) for e in kept], counts


def load_or_prepare(
    lists_dir: str | Path = LISTS_DIR,
    *,
    cache_root: str | Path | None = None,
    apt_helper: str | None = APT_HELPER,
) -> tuple[list[Entry], Counts]:
    """The prepared entries and their counts: from the cache when the lists are those it was made of, else
    read from the lists and cached (older caches of the folder are removed)."""
    from tfgraph.data.sources import cache_dir

    translations, packages = find_lists(lists_dir)
    folder = cache_dir(CACHE_NAME, cache_root)
    key = store.cache_key(["debian_descriptions", FORMAT, store.file_stats([*translations, *packages])])
    cached = folder / f"pairs-{key}.jsonl"
    if cached.is_file():
        with cached.open(encoding="utf-8") as handle:
            counts = Counts(**json.loads(next(handle)))
            entries = [Entry(*json.loads(line)) for line in handle]
        log.info("debian_descriptions: %d entries from the cache %s", len(entries), cached)
        return entries, counts
    entries, counts = prepare(translations, packages, apt_helper=apt_helper)
    folder.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".partial{os.getpid()}")
    with partial.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(counts)) + "\n")
        for e in entries:
            handle.write(json.dumps([e.package, e.group, e.document, e.summary], ensure_ascii=False) + "\n")
    os.replace(partial, cached)
    for old in folder.glob("pairs-*.jsonl"):
        if old != cached:
            old.unlink(missing_ok=True)
    return entries, counts


def debian_descriptions(
    lists_dir: str | Path = LISTS_DIR,
    cache_root: str | Path | None = None,
    *,
    seed: int = 0,
    val_fraction: float = 0.02,
    test_fraction: float = 0.02,
) -> dict[str, list[tuple[str, str]]]:
    """Debian's English package descriptions as ``(document, summary)`` pairs, split by groups of related
    packages.

    Args:
        lists_dir: where apt keeps its lists (``/var/lib/apt/lists``).
        cache_root: the cache root (None: ``$TFGRAPH_CACHE`` or ``~/.cache/tfgraph``).
        seed: which groups are held out.
        val_fraction: the share of groups held out for validation (about as much of the entries).
        test_fraction: the share of groups held out for test.

    Returns:
        ``{"train": [(document, summary), ...], "val": ..., "test": ...}``, each in the lists' order.

    Raises:
        DataError: when ``lists_dir`` has no ``Translation-en`` list (it names the command that brings them).
    """
    entries, counts = load_or_prepare(lists_dir, cache_root=cache_root)
    splits: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLITS}
    groups: dict[str, set[str]] = {split: set() for split in SPLITS}
    for e in entries:
        split = split_of(e.group, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
        splits[split].append((e.document, e.summary))
        groups[split].add(e.group)
    counts.splits = {split: {"entries": len(splits[split]), "groups": len(groups[split])} for split in SPLITS}
    for line in counts.lines():
        log.info("debian_descriptions: %s", line)
    return splits
