"""A reader of SWORD Bible modules in the zText format, the format of Debian's ``sword-text-*`` packages.

A zText module keeps each testament (``ot``, ``nt``) in three files:

- ``.bzs``, the block index: per block, three little-endian uint32 (offset in ``.bzz``, compressed size,
  uncompressed size);
- ``.bzz``, the blocks themselves, each a zlib stream (the ``.conf`` says ``CompressType=ZIP``);
- ``.bzv``, the verse index: per entry 10 bytes, a uint32 block number, a uint32 offset into the uncompressed
  block and a uint16 length.

The verse index has one entry per position of the module's versification, in order: the module heading,
the testament heading, then for each book its heading and, for each chapter, the chapter heading followed by
its verses. A verse's text is OSIS XML, turned into plain text here (footnotes and editorial headings
dropped). Two modules of the same versification line up entry by entry.
"""

from __future__ import annotations

import html
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tfgraph.data.errors import DataError
from tfgraph.data.versification import KJV_BOOKS

SWORD_ROOTS = ("~/.sword", "/usr/share/sword", "/usr/local/share/sword")
TESTAMENTS = ("ot", "nt")
_BLOCK = struct.Struct("<III")
_VERSE = struct.Struct("<IIH")


@dataclass(frozen=True)
class VerseRef:
    """A position in a versification; ``chapter`` 0 is a book heading, ``verse`` 0 a chapter heading."""

    book: str
    chapter: int
    verse: int

    def __str__(self) -> str:
        return f"{self.book} {self.chapter}:{self.verse}"


@dataclass(frozen=True)
class SwordModule:
    """A module as its ``mods.d/*.conf`` describes it."""

    name: str
    path: Path
    driver: str
    versification: str
    compression: str
    encoding: str
    abbreviation: str
    description: str


def versification_index(testament: str) -> list[VerseRef | None]:
    """The KJV versification's entries of a testament in index order (None for the two module headings)."""
    refs: list[VerseRef | None] = [None, None]
    for book_testament, book, _, chapters in KJV_BOOKS:
        if book_testament != testament:
            continue
        refs.append(VerseRef(book, 0, 0))
        for chapter, n_verses in enumerate(chapters, start=1):
            refs.append(VerseRef(book, chapter, 0))
            refs.extend(VerseRef(book, chapter, verse) for verse in range(1, n_verses + 1))
    return refs


def read_conf(path: str | Path) -> dict[str, str]:
    """The ``Key=Value`` entries of a module's ``.conf`` (the first of a repeated key), plus its ``[name]``."""
    entries: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]") and "name" not in entries:
            entries["name"] = line[1:-1]
        elif "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            entries.setdefault(key.strip(), value.strip())
    return entries


def sword_roots(sword_path: str | Path | None = None) -> list[Path]:
    """Where SWORD modules are looked for: ``sword_path``, ``$SWORD_PATH``, ``~/.sword``, ``/usr/share/sword``."""
    roots = [sword_path, os.environ.get("SWORD_PATH"), *SWORD_ROOTS]
    return [Path(r).expanduser() for r in roots if r]


def find_module(name: str, sword_path: str | Path | None = None) -> SwordModule:
    """The installed module called ``name`` (its conf section name or its abbreviation, any case).

    Raises:
        DataError: when no SWORD root has it; the message lists the modules found.
    """
    found = []
    for root in sword_roots(sword_path):
        for conf_path in sorted((root / "mods.d").glob("*.conf")):
            conf = read_conf(conf_path)
            module = SwordModule(
                name=conf.get("name", conf_path.stem),
                path=(root / conf.get("DataPath", "")).resolve(),
                driver=conf.get("ModDrv", ""),
                versification=conf.get("Versification", "KJV"),
                compression=conf.get("CompressType", "LZSS"),
                encoding=conf.get("Encoding", "Latin-1"),
                abbreviation=conf.get("Abbreviation", ""),
                description=conf.get("Description", ""),
            )
            if name.lower() in (module.name.lower(), module.abbreviation.lower()):
                return module
            found.append(module.name)
    where = ", ".join(str(r) for r in sword_roots(sword_path))
    have = f"; found: {', '.join(found)}" if found else ""
    raise DataError(f"SWORD module {name!r} is not installed (looked in {where}){have}")


def read_ztext(folder: str | Path, testament: str, encoding: str = "utf-8") -> list[str]:
    """The raw entries (OSIS XML) of one testament of a zText module, in verse-index order.

    Args:
        folder: the module's data folder (holding ``ot.bzs``, ``ot.bzv``, ``ot.bzz``, ...).
        testament: ``ot`` or ``nt``.
        encoding: the module's text encoding (its ``.conf``'s ``Encoding``).
    """
    folder = Path(folder)
    try:
        bzs, bzv, bzz = ((folder / f"{testament}.{ext}").read_bytes() for ext in ("bzs", "bzv", "bzz"))
    except FileNotFoundError as err:
        raise DataError(f"{err.filename}: missing; a zText module has {testament}.bzs, .bzv and .bzz") from err
    for data, size, ext in ((bzs, _BLOCK.size, "bzs"), (bzv, _VERSE.size, "bzv")):
        if len(data) % size:
            raise DataError(
                f"{folder / f'{testament}.{ext}'}: {len(data)} bytes, not a whole number of {size}-byte entries"
            )
    blocks = [_BLOCK.unpack_from(bzs, i) for i in range(0, len(bzs), _BLOCK.size)]
    cache: dict[int, bytes] = {}

    def block(number: int) -> bytes:
        if number not in cache:
            if number >= len(blocks):
                raise DataError(f"{folder / f'{testament}.bzv'}: points at block {number} of {len(blocks)}")
            offset, size, uncompressed = blocks[number]
            try:
                cache[number] = zlib.decompress(bzz[offset : offset + size])
            except zlib.error as err:
                raise DataError(f"{folder / f'{testament}.bzz'}: block {number} does not inflate ({err})") from err
            if len(cache[number]) != uncompressed:
                raise DataError(
                    f"{folder / f'{testament}.bzz'}: block {number} inflates to "
                    f"{len(cache[number])} bytes, the index says {uncompressed}"
                )
        return cache[number]

    entries = []
    for i in range(0, len(bzv), _VERSE.size):
        number, start, length = _VERSE.unpack_from(bzv, i)
        entries.append(block(number)[start : start + length].decode(encoding, errors="replace") if length else "")
    return entries


_DROP = re.compile(
    r"<note\b[^>]*/>|<note\b.*?</note>"  # footnotes and cross references
    r"|<title\b(?![^>]*canonical=\"true\")[^>]*>.*?</title>",  # editorial headings (a psalm's title stays)
    re.DOTALL,
)
_TAG = re.compile(r"<[^>]*>")
_TAGS_IN_WORD = re.compile(r"(?<=\w)((?:<[^>]*>)+)(?=\w)")  # tags with a letter on either side
_USFM = re.compile(r"\\\+?[a-z]+\d?\*?")  # USFM markers left over in some modules (\nd, \+nd*)
_SPACE = re.compile(r"\s+")
_BEFORE = re.compile(r" ([,.;:!?)\]’])")  # the tags' spaces left before closing punctuation ...
_AFTER = re.compile(r"([¡¿(\[]) ")  # ... and after opening punctuation


def _inside_a_word(tags: re.Match[str]) -> str:
    """Nothing for tags that only open or only close an element between two letters (``give</w>n``,
    ``preguntándo<transChange>le``): they sit inside a word; a space where one element ends and the next
    begins (``allí</w><transChange>también``) or an empty element (``<lb/>``) stands between two words."""
    found = _TAG.findall(tags.group(1))
    closing = any(t.startswith("</") for t in found)
    opening = any(not t.startswith("</") and not t.endswith("/>") for t in found)
    empty = any(t.endswith("/>") for t in found)
    return "" if closing != opening and not empty else " "


def osis_to_text(xml: str) -> str:
    """Plain text of an OSIS fragment: notes and editorial titles dropped, tags removed (a tag inside a word
    joins its two halves, others part words), ``¶`` marks removed."""
    text = _TAG.sub(" ", _TAGS_IN_WORD.sub(_inside_a_word, _DROP.sub(" ", xml)))
    text = _USFM.sub(" ", html.unescape(text).replace("¶", " "))
    text = _SPACE.sub(" ", text).strip()
    return _AFTER.sub(r"\1", _BEFORE.sub(r"\1", text))


def iter_verses(module: SwordModule) -> Iterator[tuple[VerseRef, str]]:
    """``(reference, plain text)`` of every verse of a zText module (headings left out), empty ones included."""
    if module.driver.lower() != "ztext":
        raise DataError(f"SWORD module {module.name}: driver {module.driver!r}; only zText modules are read")
    if module.compression.upper() != "ZIP":
        raise DataError(f"SWORD module {module.name}: CompressType={module.compression}; only ZIP is read")
    if module.versification != "KJV":
        raise DataError(f"SWORD module {module.name}: versification {module.versification}; only KJV is known")
    encoding = "utf-8" if module.encoding.upper().replace("-", "") == "UTF8" else "latin-1"
    for testament in TESTAMENTS:
        if not (module.path / f"{testament}.bzv").exists():
            continue  # a one-testament module
        entries = read_ztext(module.path, testament, encoding)
        refs = versification_index(testament)
        if len(entries) != len(refs):
            raise DataError(
                f"{module.path / f'{testament}.bzv'}: {len(entries)} entries; the KJV versification has {len(refs)}"
            )
        for ref, entry in zip(refs, entries, strict=True):
            if ref is not None and ref.verse:
                yield ref, osis_to_text(entry)


def aligned_verses(
    source: str, target: str, *, sword_path: str | Path | None = None
) -> list[tuple[VerseRef, str, str]]:
    """The verses two installed modules both have, side by side: ``(reference, source text, target text)``.

    Args:
        source: the source module's name or abbreviation (``KJV``, ``engKJV2006eb``).
        target: the target module's (``RV1909``, ``spaRV1909eb``).
        sword_path: a SWORD root to look in first.
    """
    modules = [find_module(name, sword_path) for name in (source, target)]
    texts = [dict(iter_verses(module)) for module in modules]
    return [(ref, text, texts[1][ref]) for ref, text in texts[0].items() if text and texts[1].get(ref)]
