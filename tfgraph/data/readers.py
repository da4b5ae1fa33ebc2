"""Readers of the user's own files. A malformed line raises a DataError that names the file and the line.

Each reads its file as a stream, a line at a time (the ``iter_*`` readers yield examples as they are read; the
``read_*`` ones collect them in a list).

| reader | files | gives |
| --- | --- | --- |
| :func:`read_text` | a file, a folder (every file under it) or a glob | one text per file |
| :func:`text_pieces` | the same, streamed line by line: never a whole file in memory | :class:`TextPiece` byte ranges |
| :func:`read_pairs` (:func:`iter_pairs`) | JSONL (``{"source": ..., "target": ...}``) or TSV (two columns) | ``(source, target)`` |
| :func:`read_conll` (:func:`iter_conll`) | CoNLL columns: a token and a tag per line, a blank line between sentences | ``(tokens, tags)`` |
| :func:`read_labeled` (:func:`iter_labeled`) | CSV or TSV with a header naming ``text`` and ``label``, or JSONL | ``(text, label)`` |
| :func:`read_hf` | Hugging Face ``datasets``: a saved dataset, or local JSON/CSV/text/Parquet files | a DatasetDict |
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfgraph.data.checks import tag_problem
from tfgraph.data.errors import DataError, at, check_choice

_GLOB_CHARS = set("*?[")


def expand_paths(spec: str | Path) -> list[Path]:
    """The files a path names: itself, every file under a folder (hidden ones left out), or a glob's matches."""
    text = os.path.expanduser(str(spec))
    if _GLOB_CHARS & set(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{spec}: no file matches this pattern")
        return files
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{path}: the folder holds no file")
        return files
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    return [path]


def check_file(path: str | Path) -> Path:
    """``path`` (``~`` expanded) when it names a file; else a DataError: ``<path>: no such file``."""
    file = Path(os.path.expanduser(str(path)))
    if file.is_dir():
        raise DataError(f"{file}: a folder, not a file")
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    return file


def read_utf8(path: Path) -> str:
    """The text of a UTF-8 file (a leading byte-order mark dropped); a DataError at the line and byte offset of
    the first byte that is not UTF-8 (a Latin-1 ``é``: ``prompts.txt:2: not valid UTF-8 (byte 0xe9 at offset 17)``)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise at(path, line, f"not valid UTF-8 (byte {data[err.start]:#04x} at offset {err.start})") from err


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line without its end)`` for each line of a UTF-8 file, read as a stream."""
    for number, (_, _, line) in enumerate(iter_lines(path), start=1):
        yield number, line[:-1] if line.endswith("\n") else line


def read_text(path: str | Path) -> list[str]:
    """The texts of a file, of every file under a folder, or of a glob's matches, in sorted path order.

    Args:
        path: ``book.txt``, ``corpus/`` or ``"corpus/**/*.txt"``.

    Returns:
        One string per file (newlines normalised to ``\\n``). A file that holds no text is an error, as are
        a folder or glob all of whose files hold none.
    """
    files = expand_paths(path)
    texts = [read_utf8(file).replace("\r\n", "\n") for file in files]
    if not any(text.strip() for text in texts):
        if len(files) == 1:
            raise DataError(f"{files[0]}: the file holds no text (it is empty or blank)")
        raise DataError(f"{path}: none of its {len(files)} files holds any text (they are empty or blank)")
    return texts


BOM = b"\xef\xbb\xbf"
BLOCK_CHARS = 1 << 16  # a TextPiece is read in blocks of about this many characters, cut at line ends


def iter_lines(path: Path, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, str]]:
    """``(byte offset, bytes, line)`` of the UTF-8 file's lines from byte ``start`` to ``end``, read as a stream.

    Each line keeps its ``\n`` (``\r\n`` becomes ``\n``; a leading byte-order mark is skipped, its bytes not
    counted in the line's). A byte that is not UTF-8 is an error at its line (counted from ``start``).
    """
    with path.open("rb") as handle:
        offset = start
        handle.seek(start)
        for number, raw in enumerate(handle, start=1):
            if end is not None and offset + len(raw) > end:
                raw = raw[: end - offset]
            if offset == 0 and raw.startswith(BOM):
                offset, raw = len(BOM), raw[len(BOM) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                where = f"byte {raw[err.start]:#04x} at offset {offset + err.start}"
                raise at(path, number, f"not valid UTF-8 ({where})") from err
            yield offset, len(raw), line[:-2] + "\n" if line.endswith("\r\n") else line
            offset += len(raw)
            if end is not None and offset >= end:
                return


@dataclass(frozen=True)
class TextPiece:
    """Bytes ``start`` to ``end`` of a UTF-8 text file: a text, or the head or tail of one, read when needed.

    Args:
        path: the file.
        start: the first byte.
        end: the byte after the last.
    """

    path: str
    start: int
    end: int

    def blocks(self, size: int = BLOCK_CHARS) -> Iterator[str]:
        """The piece's text in blocks of about ``size`` characters, each ending at a line end (the last maybe
        not); a piece smaller than that is one block."""
        block: list[str] = []
        length = 0
        for _, _, line in iter_lines(Path(self.path), self.start, self.end):
            block.append(line)
            length += len(line)
            if length >= size:
                yield "".join(block)
                block, length = [], 0
        if block:
            yield "".join(block)

    @property
    def text(self) -> str:
        """The whole text (read from the file)."""
        return "".join(self.blocks())


def _cut_at(path: Path, targets: Sequence[int]) -> tuple[list[int], list[bool]]:
    """The byte offsets where :func:`~tfgraph.data.examples.split_text` cuts the file at each character
    position of ``targets`` (ascending: the end of the line it falls in, or the position itself in a last line
    without a newline), and, for each piece between the cuts, whether it is blank. One pass over the file."""
    cuts: list[int] = []
    blank = [True] * (len(targets) + 1)
    position = 0  # characters before the line
    for offset, size, line in iter_lines(path):
        end = position + len(line)
        rest, rest_offset, rest_position = line, offset, position
        while len(cuts) < len(targets) and max(targets[len(cuts)] - 1, 0) < end:
            if line.endswith("\n"):  # the cut falls after this line
                head, rest_offset, rest = rest, offset + size, ""
            else:  # inside the last line
                take = targets[len(cuts)] - rest_position
                head, rest, rest_position = rest[:take], rest[take:], rest_position + take
                rest_offset += len(head.encode("utf-8"))
            blank[len(cuts)] = blank[len(cuts)] and not head.strip()
            cuts.append(rest_offset)
        blank[len(cuts)] = blank[len(cuts)] and not rest.strip()
        position = end
    size = path.stat().st_size
    return cuts + [size] * (len(targets) - len(cuts)), blank


def _count_chars(path: Path) -> tuple[int, bool]:
    """``(characters, whether any is not whitespace)`` of a UTF-8 file, read as a stream."""
    chars, text = 0, False
    for _, _, line in iter_lines(path):
        chars += len(line)
        text = text or bool(line.strip())
    return chars, text


def text_pieces(
    spec: str | Path | Sequence[Path],
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    *,
    whole: bool = False,
) -> tuple[list[TextPiece], list[TextPiece], list[TextPiece]]:
    """:func:`read_text`'s texts as byte ranges, each file cut as :func:`~tfgraph.data.examples.split_text` cuts
    it (the first share train, the next val, the last test; blank pieces left out), streamed: the files are
    read a line at a time, never held whole.

    With ``whole`` every file is one training piece, blank files too (as :func:`read_text` gives them).
    The errors are :func:`read_text`'s: a file that is not UTF-8 (at its line), no text in any file.
    """
    files = list(spec) if isinstance(spec, (list, tuple)) else expand_paths(spec)  # a path, or the files
    counts = [_count_chars(file) for file in files]
    if not any(text for _, text in counts):
        if len(files) == 1:
            raise DataError(f"{files[0]}: the file holds no text (it is empty or blank)")
        raise DataError(f"{spec}: none of its {len(files)} files holds any text (they are empty or blank)")
    parts: tuple[list[TextPiece], ...] = ([], [], [])
    for file, (chars, _) in zip(files, counts, strict=True):
        size = file.stat().st_size
        if whole:
            parts[0].append(TextPiece(str(file), 0, size))
            continue
        targets = [round(chars * (1 - val_fraction - test_fraction)), round(chars * (1 - test_fraction))]
        cuts, blank = _cut_at(file, targets)
        bounds = [0, *cuts, size]
        for part, a, b, empty in zip(parts, bounds[:-1], bounds[1:], blank, strict=True):
            if not empty and b > a:
                part.append(TextPiece(str(file), a, b))
    return parts  # type: ignore[return-value]


def _format_of(path: Path, given: str | None, choices: Mapping[str, str]) -> str:
    """The file format: ``given``, or the one its suffix names (``choices`` maps suffixes to formats)."""
    if given is not None:
        check_choice("format", given, sorted(set(choices.values())))
        return given
    fmt = choices.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(choices))
        raise DataError(f"{path}: cannot tell the format from the suffix {path.suffix!r} ({known}); set `format`")
    return fmt


def _json_record(path: Path, number: int, line: str, keys: Sequence[str]) -> list[str]:
    """The string values of ``keys`` in a JSONL line."""
    expected = f"a JSON object with string fields {', '.join(map(repr, keys))}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise at(path, number, f"expected {expected}; not JSON ({err.msg} at column {err.colno})") from err
    if not isinstance(record, dict):
        raise at(path, number, f"expected {expected}, got a JSON {type(record).__name__}")
    values = []
    for key in keys:
        if key not in record:
            have = ", ".join(map(repr, record)) or "none"
            raise at(path, number, f"expected {expected}; field {key!r} is missing (fields: {have})")
        value = record[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # a numeric label
        if not isinstance(value, str):
            raise at(path, number, f"expected {expected}; field {key!r} is a {type(value).__name__}")
        values.append(value)
    return values


def read_pairs(path: str | Path, **options: Any) -> list[tuple[str, str]]:
    """Every pair :func:`iter_pairs` reads, in a list."""
    return list(iter_pairs(path, **options))


def iter_pairs(
    path: str | Path, *, format: str | None = None, source_key: str = "source", target_key: str = "target"
) -> Iterator[tuple[str, str]]:
    """Sequence pairs from JSONL (one object a line) or TSV (``source<TAB>target`` a line); blank lines skipped.
    Read as a stream, a line at a time.

    Args:
        path: the file.
        format: ``jsonl`` or ``tsv``; None: from the suffix (``.jsonl``/``.json``, ``.tsv``/``.txt``).
        source_key: the JSONL field of the source text.
        target_key: the JSONL field of the target text.
    """
    path = check_file(path)
    fmt = _format_of(path, format, {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv", ".txt": "tsv"})
    pairs = 0
    for number, line in _lines(path):
        if not line.strip():
            continue
        if fmt == "jsonl":
            source, target = _json_record(path, number, line, (source_key, target_key))
        else:
            columns = line.split("\t")
            if len(columns) != 2:
                raise at(path, number, f"expected 2 tab-separated columns (source, target), found {len(columns)}")
            source, target = columns
        pairs += 1
        yield source, target
    if not pairs:
        raise DataError(f"{path}: no pairs in the file")


def read_conll(path: str | Path, **options: Any) -> list[tuple[list[str], list[str]]]:
    """Every sentence :func:`iter_conll` reads, in a list."""
    return list(iter_conll(path, **options))


def iter_conll(
    path: str | Path,
    *,
    token_column: int = 0,
    tag_column: int = -1,
    separator: str | None = None,
    comment_prefix: str | None = None,
) -> Iterator[tuple[list[str], list[str]]]:
    """Tagged sentences from CoNLL-style columns: one token a line, a blank line between sentences; read as a
    stream, a line at a time.

    ``-DOCSTART-`` lines are skipped. Tags are BIO (``O``, ``B-PER``, ``I-PER``; IOB1, IOE and the ``E-``/``S-``
    of BIOES too): any other tag is an error at its line (see :func:`~tfgraph.data.checks.tag_problem`).

    Args:
        path: the file.
        token_column: the column of the token.
        tag_column: the column of the tag (-1: the last).
        separator: the column separator; None: any run of whitespace (CoNLL-2003 spaces, WNUT tabs).
        comment_prefix: lines starting with it are skipped (``"#"`` for CoNLL-U); None: none are.

    Returns:
        ``(tokens, tags)`` per sentence.
    """
    path = check_file(path)
    sentences = 0
    tokens: list[str] = []
    tags: list[str] = []
    need = max(2, *(i + 1 if i >= 0 else -i for i in (token_column, tag_column)))  # columns a line must have
    for number, line in _lines(path):
        if comment_prefix is not None and line.startswith(comment_prefix):
            continue
        columns = line.split(separator) if separator is not None else line.split()
        if not line.strip():
            if tokens:
                sentences += 1
                yield tokens, tags
                tokens, tags = [], []
            continue
        if columns[0] == "-DOCSTART-":
            continue
        if len(columns) < need:
            raise at(
                path,
                number,
                f"expected a token (column {token_column}) and a tag (column {tag_column}), "
                f"found {len(columns)} column(s): {line!r}",
            )
        token, tag = columns[token_column].strip(), columns[tag_column].strip()
        if not token or not tag:
            raise at(path, number, f"empty token or tag: {line!r}")
        problem = tag_problem(tag)
        if problem is not None:
            raise at(path, number, problem)
        tokens.append(token)
        tags.append(tag)
    if tokens:
        sentences += 1
        yield tokens, tags
    if not sentences:
        raise DataError(f"{path}: no sentences in the file")


def read_labeled(path: str | Path, **options: Any) -> list[tuple[str, str]]:
    """Every example :func:`iter_labeled` reads, in a list."""
    return list(iter_labeled(path, **options))


def iter_labeled(
    path: str | Path, *, format: str | None = None, text_key: str = "text", label_key: str = "label"
) -> Iterator[tuple[str, str]]:
    """Labelled texts: CSV or TSV with a header naming the text and label columns, or JSONL; read as a stream.

    Args:
        path: the file.
        format: ``csv``, ``tsv`` or ``jsonl``; None: from the suffix.
        text_key: the column (or JSON field) of the text.
        label_key: the column (or JSON field) of the label (a string or a number).

    Returns:
        ``(text, label)`` per example, the label as a string.
    """
    path = check_file(path)
    fmt = _format_of(path, format, {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"})
    examples = 0
    if fmt == "jsonl":
        for number, line in _lines(path):
            if line.strip():
                text, label = _json_record(path, number, line, (text_key, label_key))
                examples += 1
                yield text, _check_label(path, number, label)
    else:
        lines = (line for _, _, line in iter_lines(path))
        rows = csv.reader(lines, delimiter="," if fmt == "csv" else "\t")
        try:
            header = next(rows)
        except StopIteration:
            raise DataError(f"{path}: empty file; expected a header naming {text_key!r} and {label_key!r}") from None
        missing = [key for key in (text_key, label_key) if key not in header]
        if missing:
            raise at(path, 1, f"the header {header} lacks the column(s) {', '.join(map(repr, missing))}")
        text_at, label_at = header.index(text_key), header.index(label_key)
        try:
            for row in rows:
                if not row:
                    continue
                if len(row) != len(header):
                    raise at(path, rows.line_num, f"expected {len(header)} fields as in the header, found {len(row)}")
                examples += 1
                yield row[text_at], _check_label(path, rows.line_num, row[label_at])
        except csv.Error as err:
            raise at(path, rows.line_num, f"malformed {fmt.upper()} ({err})") from err
    if not examples:
        raise DataError(f"{path}: no examples in the file")


def _check_label(path: Path, line: int, label: str) -> str:
    label = label.strip()
    if not label:
        raise at(path, line, "empty label")
    return label


HF_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".txt": "text", ".parquet": "parquet"}


def read_hf(
    path: str | Path | None = None,
    *,
    data_files: Mapping[str, str | Sequence[str]] | None = None,
    format: str | None = None,
    cache_dir: str | None = None,
) -> Any:
    """A Hugging Face ``DatasetDict`` from local data only, never a hub.

    Args:
        path: a dataset saved with ``save_to_disk`` (a folder).
        data_files: instead of ``path``: split name -> local file(s) (paths, folders or globs).
        format: ``json``, ``csv``, ``text`` or ``parquet``; None: from the files' suffix.
        cache_dir: where ``datasets`` keeps its Arrow cache (None: its default).
    """
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets

    datasets.config.HF_HUB_OFFLINE = True
    if (path is None) == (data_files is None):
        raise DataError("read_hf: give either `path` (a saved dataset) or `data_files` (local files), not both")
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise DataError(
                f"{folder}: no saved dataset there (a folder written by save_to_disk); tfgraph never "
                "downloads from the hub: give local files as data_files"
            )
        try:
            loaded = datasets.load_from_disk(str(folder))
        except (FileNotFoundError, ValueError) as err:
            raise DataError(f"{folder}: not a dataset saved with save_to_disk ({err})") from err
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    assert data_files is not None
    files = {
        split: [str(p) for spec in ([specs] if isinstance(specs, (str, Path)) else specs) for p in expand_paths(spec)]
        for split, specs in data_files.items()
    }
    first = Path(next(iter(files.values()))[0])
    fmt = _format_of(first, format, HF_FORMATS)
    if fmt == "json":  # datasets reports a bad line without its number: check each line here first
        for split_files in files.values():
            for file in map(Path, split_files):
                if file.suffix.lower() == ".jsonl":
                    _check_jsonl(file)
    try:
        return datasets.load_dataset(fmt, data_files=files, cache_dir=cache_dir)
    except Exception as err:  # datasets and pandas raise many kinds; name the files
        raise DataError(f"{', '.join(f for fs in files.values() for f in fs)}: cannot load as {fmt} ({err})") from err


def _check_jsonl(path: Path) -> None:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise at(path, number, f"expected a JSON object; not JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(record, dict):
            raise at(path, number, f"expected a JSON object, got a JSON {type(record).__name__}")
