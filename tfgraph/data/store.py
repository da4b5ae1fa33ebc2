"""Prepared data on disk: token ids in flat files read back as numpy memory maps, made once per cache key.

A prepared data set is one folder, ``<root>/<name>-<key>/``, holding

- ``meta.json``: the format version, the key and what was stored (counts, dtypes, label names), written last;
- ``tokenizer.json``: the tokenizer the ids are of;
- per split and field a flat file of values (``train.ids.bin``) and, for examples of varying length, the
  offsets of each example in it (``train.ids.idx``, int64, one more than the examples), as nanoGPT keeps its
  ``train.bin``;
- per split the raw examples as JSON lines (``train.raw.bin`` and ``.idx``), so that ``datamodule.splits``
  holds them without reading the source again (a text file's pieces are stored as byte ranges of the file).

The folder is made in a temporary sibling and renamed into place once complete, under a lock
(``<folder>.lock``): two processes preparing the same key wait for each other instead of writing over each
other, and a killed preparation leaves only a ``*.partial-*`` folder that is never opened (the next preparation
of that key removes it). A folder whose ``meta.json`` has another format version is prepared again.

The key (:func:`cache_key`) is a hash of what the prepared data depends on: the source files' paths, sizes and
modification times, the tokenizer's settings (or the given tokenizer's JSON), the split settings and
:data:`FORMAT`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfgraph.data.errors import DataConfigError

FORMAT = 1  # bump when the layout of a prepared folder changes: older folders are prepared again
META = "meta.json"
log = logging.getLogger(__name__)


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a vocabulary (uint16 up to 65,536 ids)."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def file_stats(paths: Iterable[str | Path]) -> list[tuple[str, int, int]]:
    """``(absolute path, size, modification time in ns)`` of each file, the part of a key that the files give."""
    stats = []
    for path in paths:
        file = Path(path).expanduser().resolve()
        info = file.stat()
        stats.append((str(file), info.st_size, info.st_mtime_ns))
    return stats


def cache_key(parts: Any) -> str:
    """A 20-hex-digit key of ``parts`` (plain JSON values) and :data:`FORMAT`."""
    text = json.dumps([FORMAT, parts], sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# ------------------------------------------------------------------------------------------ writing


class ArrayWriter:
    """Appends 1-D arrays of one dtype to a flat file (``path``), counting the values written."""

    def __init__(self, path: Path, dtype: np.dtype | type) -> None:
        self.path, self.dtype, self.count = path, np.dtype(dtype), 0
        self._file = path.open("wb")

    def append(self, values: np.ndarray | Sequence[int]) -> None:
        array = np.asarray(values, dtype=self.dtype)
        array.tofile(self._file)
        self.count += len(array)

    def close(self) -> int:
        self._file.close()
        return self.count


class RaggedWriter:
    """Examples of varying length: their values in one flat file and, beside it, their offsets (int64)."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype | type) -> None:
        self.values = ArrayWriter(folder / f"{name}.bin", dtype)
        self.offsets = ArrayWriter(folder / f"{name}.idx", np.int64)
        self.offsets.append([0])

    def extend(self, rows: Iterable[Sequence[int] | np.ndarray]) -> None:
        """Append each row (one example's values)."""
        rows = [np.asarray(r, dtype=self.values.dtype) for r in rows]
        if not rows:
            return
        ends = self.values.count + np.cumsum([len(r) for r in rows], dtype=np.int64)
        self.values.append(np.concatenate(rows))
        self.offsets.append(ends)

    def close(self) -> int:
        """The number of examples written."""
        self.values.close()
        return self.offsets.close() - 1


class RecordWriter:
    """Raw examples as UTF-8 JSON, one record an example (a :class:`RaggedWriter` of bytes)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.rows = RaggedWriter(folder, name, np.uint8)

    def extend(self, records: Iterable[Any]) -> None:
        data = [np.frombuffer(json.dumps(r, ensure_ascii=False).encode(), dtype=np.uint8) for r in records]
        self.rows.extend(data)

    def close(self) -> int:
        return self.rows.close()


# ------------------------------------------------------------------------------------------ reading


def open_array(path: Path, dtype: np.dtype | type) -> np.ndarray:
    """The flat file at ``path`` as a read-only memory map (an empty array for an empty file)."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.asarray(np.memmap(path, dtype=dtype, mode="r"))  # a plain array over the map


class Ragged(Sequence):
    """Examples of varying length read back from a :class:`RaggedWriter`'s files; ``ragged[i]`` is a list."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype | type) -> None:
        self.where = (folder, name, dtype)
        self.values = open_array(folder / f"{name}.bin", dtype)
        self.offsets = open_array(folder / f"{name}.idx", np.int64)

    def __getstate__(self) -> tuple[Path, str, Any]:  # a DataLoader worker maps the files again
        return self.where

    def __setstate__(self, where: tuple[Path, str, Any]) -> None:
        self.__init__(*where)  # type: ignore[misc]

    def __len__(self) -> int:
        return max(len(self.offsets) - 1, 0)

    def row(self, index: int) -> np.ndarray:
        """Example ``index``'s values, a view of the memory map."""
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return self.values[self.offsets[index] : self.offsets[index + 1]]

    def __getitem__(self, index: int) -> list[int]:  # type: ignore[override]
        return self.row(index).tolist()


class Records(Sequence):
    """Raw examples read back from a :class:`RecordWriter`, each turned back by ``decode`` (a JSON value ->
    the example)."""

    def __init__(self, folder: Path, name: str, decode: Callable[[Any], Any]) -> None:
        self.rows, self.decode = Ragged(folder, name, np.uint8), decode

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        return self.decode(json.loads(self.rows.row(index).tobytes()))

    def __add__(self, other: Sequence[Any]) -> list[Any]:
        return list(self) + list(other)

    def __radd__(self, other: Sequence[Any]) -> list[Any]:
        return list(other) + list(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Records({len(self)} examples)"


# -------------------------------------------------------------------------------------- the folder


def read_meta(folder: Path, key: str) -> dict[str, Any] | None:
    """The ``meta.json`` of a complete folder prepared in this format for ``key``; else None."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("key") != key:
        log.info("%s: prepared in format %s, not %s: preparing it again", folder, meta.get("format"), FORMAT)
        return None
    return meta


def _writable(root: Path) -> None:
    """Make ``root``, or say which config key to change when it cannot be written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root, prefix=".probe-")
        probe.close()
    except OSError as err:
        raise DataConfigError.at(
            "data.cache_dir",
            f"{root}: cannot write the prepared data there ({err.strerror or err}); set data.cache_dir to a "
            "writable folder",
        ) from err


def prepared(folder: Path, key: str, build: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """The meta of the prepared folder for ``key``: opened when complete, else built by ``build(tmp)`` (which
    fills a temporary folder and returns what ``meta.json`` records) and renamed into place, under a lock."""
    meta = read_meta(folder, key)
    if meta is not None:
        return meta
    from filelock import FileLock

    _writable(folder.parent)
    with FileLock(str(folder) + ".lock"):
        meta = read_meta(folder, key)  # another process may have prepared it while this one waited
        if meta is not None:
            return meta
        for stale in [folder, *folder.parent.glob(folder.name + ".partial-*")]:  # none is being written: locked
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".partial-", dir=folder.parent))
        try:
            meta = {"format": FORMAT, "key": key, **build(tmp)}
            (tmp / META).write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return meta


def folder_size(folder: Path) -> int:
    """Bytes of the files in a prepared folder."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
