"""How each shape of example is held out, tokenized and batched; the DataModules share these.

| examples | shape | tasks | batch |
| --- | --- | --- | --- |
| :class:`TextExamples` | texts | causal_lm, masked_lm | ``input_ids, attention_mask`` ``[B, T]`` |
| :class:`PairExamples` | ``(source, target)`` | seq2seq | ``input_ids, attention_mask [B, S]``, ``labels [B, T]`` |
| :class:`LabeledExamples` | ``(text, label)`` | sequence_classification | ``input_ids, attention_mask [B, T]``, ``labels [B]`` |
| :class:`TaggedExamples` | ``(tokens, tags)`` | token_classification | ``input_ids, attention_mask, labels [B, T]`` |

Padding is ``<pad>`` (id 0) in ``input_ids`` with ``attention_mask`` 0, and -100 in ``labels``.

Each kind writes a split's encoded examples into a prepared folder (:meth:`Examples.write`, in batches: token
ids as flat files with offsets, see :mod:`tfgraph.data.store`) and reads them back as a dataset over memory maps
(:meth:`Examples.open`); the raw examples are kept beside them as records (:meth:`Examples.record`).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tfgraph.data.errors import DataError
from tfgraph.data.readers import TextPiece
from tfgraph.data.store import ArrayWriter, Ragged, RaggedWriter, batched, ids_dtype, open_array
from tfgraph.data.tokenizers import Tokenizer

IGNORE_INDEX = -100
SHUFFLE_CHUNK = 1 << 16  # indices of a shuffle made Python ints at a time


class RowsDataset(Dataset):
    """A map-style dataset whose item ``i`` is ``(column[i] for column in columns)``: lists of ids from
    :class:`~tfgraph.data.store.Ragged` columns, whole numbers from flat arrays.

    Args:
        columns: equally long columns, each a Ragged or a 1-D array.
    """

    def __init__(self, columns: Sequence[Ragged | np.ndarray]) -> None:
        self.columns = list(columns)

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return tuple(c[index] if isinstance(c, Ragged) else int(c[index]) for c in self.columns)

    @property
    def items(self) -> RowsDataset:
        """The items in order (the dataset itself, iterable)."""
        return self


class ChunkDataset(Dataset):
    """Windows of ``block_size`` tokens over one token stream, each overlapping the next by one token.

    With the shift of causal LM (position ``t`` predicts ``t + 1``) every token but the stream's first is a
    target exactly once. The last window may be shorter; ``drop_short`` leaves it out (for training).

    Args:
        stream: ``[N]`` token ids.
        block_size: tokens per window.
        drop_short: leave out a last window shorter than ``block_size``.
    """

    def __init__(self, stream: torch.Tensor, block_size: int, drop_short: bool) -> None:
        if block_size < 2:
            raise DataError(f"block_size must be at least 2, got {block_size}")
        self.stream, self.block_size, self.stride = stream, block_size, block_size - 1
        n = max(len(stream) - 1, 0)
        self.n_windows = -(-n // self.stride)  # ceil
        if drop_short and self.n_windows > 1 and len(stream) < (self.n_windows - 1) * self.stride + block_size:
            self.n_windows -= 1

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.n_windows:
            raise IndexError(index)
        start = index * self.stride
        window = self.stream[start : start + self.block_size]
        return window if isinstance(window, torch.Tensor) else torch.from_numpy(window.astype(np.int64))


class MappedChunks(ChunkDataset):
    """:class:`ChunkDataset` over a flat file of token ids (``stream`` a read-only memory map of it), which a
    DataLoader worker reopens rather than receives a copy of.

    Args:
        path: the file of ids.
        dtype: their dtype.
        block_size: tokens per window.
        drop_short: leave out a last window shorter than ``block_size``.
    """

    def __init__(self, path: Path, dtype: np.dtype, block_size: int, drop_short: bool) -> None:
        self.path, self.dtype, self.drop_short = path, dtype, drop_short
        super().__init__(open_array(path, dtype), block_size, drop_short)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "dtype": self.dtype, "block_size": self.block_size, "drop_short": self.drop_short}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]


class EpochShuffle(Sampler[int]):
    """A shuffle drawn from ``seed`` and the epoch (Lightning calls ``set_epoch``): a resumed run sees the same order.

    Args:
        n: the dataset's length.
        seed: the shuffle's seed.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=generator)  # 8 bytes a window; a list of it would take 36
        for chunk in order.split(SHUFFLE_CHUNK):
            yield from chunk.tolist()

    def __len__(self) -> int:
        return self.n


class ResumableLoader(DataLoader):
    """A training DataLoader that Lightning saves and restores mid-epoch (its ``state_dict`` /
    ``load_state_dict`` protocol), so that a run resumed from a checkpoint taken inside an epoch trains on the
    batches the interrupted run had not reached yet.

    The state is the number of batches handed out in the current epoch; a restored loader's next epoch skips
    that many (drawn but not returned, which holds under any sampler, a distributed one included). With
    :class:`EpochShuffle` the resumed epoch's order is the interrupted one's, so the rest of the run sees the same
    batches as an uninterrupted run. Takes :class:`torch.utils.data.DataLoader`'s arguments.
    """

    batches_yielded = 0  # in the epoch being iterated (or the last one, once it ended)
    epoch_batches: float | None = (
        None  # batches in an epoch when the trainer stops short of len(self) (the task sets it)
    )
    _skip = 0  # batches the next iteration skips (set by load_state_dict)

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        self.batches_yielded = 0
        for batch in super().__iter__():
            self.batches_yielded += 1
            if self.batches_yielded > skip:
                yield batch

    def state_dict(self) -> dict[str, int]:
        done = self.batches_yielded
        epoch = len(self) if self.epoch_batches is None else min(len(self), self.epoch_batches)
        return {"batches_yielded": done if done < epoch else 0}  # a finished epoch resumes with a new one

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._skip = int(state.get("batches_yielded", 0))


def pad(rows: Sequence[Sequence[int] | torch.Tensor], value: int) -> torch.Tensor:
    """``[B, longest]`` LongTensor of ``rows``, right-padded with ``value``."""
    out = torch.full((len(rows), max((len(r) for r in rows), default=0)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def inputs(rows: Sequence[Sequence[int] | torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` padded with ``pad_id`` and the ``attention_mask`` that marks the real tokens."""
    mask = pad([[1] * len(r) for r in rows], 0)
    return {"input_ids": pad(rows, pad_id), "attention_mask": mask}


def _held_out_parts(n: int, val_fraction: float, test_fraction: float, seed: int) -> list[list[int]]:
    """The indices of train, val and test among ``n`` examples (each in order): a seeded random share for val
    and test, the rest train."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return [sorted(order[n_val + n_test :]), sorted(order[:n_val]), sorted(order[n_val : n_val + n_test])]


def hold_out(examples: Sequence[Any], val_fraction: float, test_fraction: float, seed: int) -> tuple:
    """``(train, val, test)``: a seeded random share of the examples for val and test, the rest, in order, train.

    Of :class:`StreamedExamples`, three :class:`StreamedSplit` of them (the same examples, read when iterated).
    """
    parts = _held_out_parts(len(examples), val_fraction, test_fraction, seed)
    if isinstance(examples, StreamedExamples):
        which = np.zeros(len(examples), dtype=np.uint8)
        for number, part in enumerate(parts):
            which[part] = number
        return tuple(StreamedSplit(examples, which, number) for number in range(len(parts)))
    return tuple([examples[i] for i in part] for part in parts)


class StreamedExamples:
    """The examples a reader yields, read again from their file each time they are iterated, never all held.

    They are counted when made, which reads them once (a malformed line is an error then).

    Args:
        read: a new iterator over the examples at each call (``lambda: readers.iter_pairs(path)``).
    """

    def __init__(self, read: Callable[[], Iterable[Any]]) -> None:
        self.read = read
        self.count = sum(1 for _ in read())

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Any]:
        return iter(self.read())


class StreamedSplit:
    """The examples of one split of :class:`StreamedExamples`: those whose entry in ``which`` is ``number``.

    Args:
        examples: all examples.
        which: the split number of each example (uint8).
        number: this split's.
    """

    def __init__(self, examples: StreamedExamples, which: np.ndarray, number: int) -> None:
        self.examples, self.which, self.number = examples, which, number
        self.count = int((which == number).sum())

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Any]:
        for example, number in zip(self.examples, self.which, strict=True):
            if number == self.number:
                yield example


def _cut(text: str, at: int) -> int:
    """The end of the line that position ``at`` falls in (``at`` itself when no newline follows)."""
    newline = text.find("\n", max(at - 1, 0))  # at a line's start already: cut there
    return at if newline == -1 else newline + 1


def split_text(texts: Iterable[str], val_fraction: float, test_fraction: float) -> tuple[list[str], ...]:
    """``(train, val, test)`` of each text cut at line ends: the first share train, the next val, the last test.

    Every document so keeps its head in training and lends its tail to evaluation, as nanoGPT's 90/10 split
    of a single text does.
    """
    parts: tuple[list[str], ...] = ([], [], [])
    for text in texts:
        a = _cut(text, round(len(text) * (1 - val_fraction - test_fraction)))
        b = max(a, _cut(text, round(len(text) * (1 - test_fraction))))
        for part, piece in zip(parts, (text[:a], text[a:b], text[b:]), strict=True):
            if piece.strip():
                part.append(piece)
    return parts


def _label_order(label: str) -> tuple:
    """Sort key: numbers by value, then ``O`` before BIO tags grouped by entity type (B before I), then the rest."""
    if label.lstrip("-").isdigit():
        return (0, int(label), "")
    if label == "O":
        return (1, 0, "")
    if len(label) > 2 and label[1] == "-" and label[0] in "BIES":
        return (2, label[2:], "BIES".index(label[0]))
    return (3, label, "")


def collect_labels(seen: set[str], given: Sequence[str] | None, what: str) -> list[str]:
    """The label names: ``given`` (checked to cover the labels ``seen`` in every split), or those seen, sorted."""
    if given is None:
        return sorted(seen, key=_label_order)
    names = [str(n) for n in given]
    unknown = sorted(seen - set(names), key=_label_order)
    if unknown:
        raise DataError(f"{what} {', '.join(map(repr, unknown))} not among the given label_names {names}")
    return names


ENCODE_BATCH = 1024  # examples per encode_batch call while writing
TEXT_BATCH_CHARS = 1 << 20  # characters of text per encode_batch call while writing a text split


class Examples(ABC):
    """How one shape of example is held out, tokenized, stored and batched."""

    fits: tuple[str, ...]
    has_labels = False

    def hold_out(self, examples: Sequence[Any], val_fraction: float, test_fraction: float, seed: int) -> tuple:
        """``(train, val, test)`` taken from one list of examples."""
        return hold_out(examples, val_fraction, test_fraction, seed)

    @abstractmethod
    def texts(self, examples: Sequence[Any]) -> Iterable[str]:
        """The texts a tokenizer is trained on (an iterator: read as they are needed)."""

    def label_names(self, splits: dict[str, Sequence[Any]], given: Sequence[str] | None) -> list[str] | None:
        """The names of the label ids (None: this kind has no labels)."""
        return None

    @abstractmethod
    def write(
        self, folder: Path, split: str, examples: Sequence[Any], tokenizer: Tokenizer, label_names: list[str] | None
    ) -> None:
        """Encode one split's examples, a batch at a time, into files of ``folder`` named after ``split``."""

    @abstractmethod
    def open(self, folder: Path, split: str, tokenizer: Tokenizer, train: bool) -> Dataset:
        """The dataset of one split that :meth:`write` wrote, over memory maps."""

    def record(self, example: Any) -> Any:
        """An example as a JSON value, kept with the prepared data (:meth:`from_record` reads it back)."""
        return example

    def from_record(self, value: Any) -> Any:
        """The example :meth:`record` stored."""
        return tuple(value)

    @abstractmethod
    def collate(self, items: list[Any], tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
        """One batch of dataset items."""


class TextExamples(Examples):
    """Texts for language modelling, cut into windows of ``block_size`` tokens.

    The texts are tokenized, each followed by ``<eos>``, and joined into one stream (see
    :class:`ChunkDataset`), written a batch of text at a time: a text is a string or a
    :class:`~tfgraph.data.readers.TextPiece` of a file, read in blocks that end at line ends (a text larger than
    a block is so encoded a block at a time, which the byte, char, word and WordPiece tokenizers encode as the
    whole; BPE and Unigram may tokenize a block's first word as a text's).

    Args:
        block_size: tokens per window.
        split_lines: each non-blank line of a text is a text of its own (followed by ``<eos>``), as in PTB.
    """

    fits = ("causal_lm", "masked_lm")

    def __init__(self, *, block_size: int, split_lines: bool = False) -> None:
        self.block_size = block_size
        self.split_lines = split_lines

    def hold_out(self, examples: Sequence[str], val_fraction: float, test_fraction: float, seed: int) -> tuple:
        return split_text(examples, val_fraction, test_fraction)

    def _pieces(self, examples: Iterable[str | TextPiece]) -> Iterator[tuple[str, bool]]:
        """``(text, whether a document ends with it)``: each document (a text, or a line of one with
        ``split_lines``) whole or in blocks."""
        for example in examples:
            blocks = iter([example]) if isinstance(example, str) else example.blocks()
            if self.split_lines:
                for block in blocks:
                    for line in block.split("\n"):
                        if line.strip():
                            yield line.strip(), True
                continue
            block = next(blocks, "")
            for following in blocks:
                yield block, False
                block = following
            yield block, True

    def texts(self, examples: Sequence[str | TextPiece]) -> Iterable[str]:
        return (text for text, _ in self._pieces(examples))

    def stream(self, examples: Sequence[str | TextPiece], tokenizer: Tokenizer) -> Iterator[np.ndarray]:
        """The ids of every text, each followed by ``<eos>``, in arrays of about :data:`TEXT_BATCH_CHARS`
        characters' worth."""
        batch: list[tuple[str, bool]] = []
        chars = 0

        def encoded() -> np.ndarray:
            ids: list[int] = []
            for piece, (_, ends) in zip(tokenizer.encode_batch([t for t, _ in batch]), batch, strict=True):
                ids += piece
                if ends:
                    ids.append(tokenizer.eos_id)
            return np.asarray(ids, dtype=np.int64)

        for text, ends in self._pieces(examples):
            batch.append((text, ends))
            chars += len(text)
            if chars >= TEXT_BATCH_CHARS or len(batch) >= 16 * ENCODE_BATCH:
                yield encoded()
                batch, chars = [], 0
        if batch:
            yield encoded()

    def write(
        self, folder: Path, split: str, examples: Sequence[Any], tokenizer: Tokenizer, label_names: list[str] | None
    ) -> None:
        out = ArrayWriter(folder / f"{split}.ids.bin", ids_dtype(tokenizer.vocab_size))
        for ids in self.stream(examples, tokenizer):
            out.append(ids)
        out.close()

    def open(self, folder: Path, split: str, tokenizer: Tokenizer, train: bool) -> Dataset:
        path = folder / f"{split}.ids.bin"
        return MappedChunks(path, ids_dtype(tokenizer.vocab_size), self.block_size, drop_short=train)

    def record(self, example: str | TextPiece) -> Any:
        if isinstance(example, TextPiece):
            return {"file": example.path, "start": example.start, "end": example.end}
        return example

    def from_record(self, value: Any) -> str:
        if isinstance(value, dict):
            return TextPiece(value["file"], value["start"], value["end"]).text
        return value

    def collate(self, items: list[torch.Tensor], tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
        return inputs(items, tokenizer.pad_id)


def _ragged(folder: Path, split: str, name: str, tokenizer: Tokenizer) -> RaggedWriter:
    return RaggedWriter(folder, f"{split}.{name}", ids_dtype(tokenizer.vocab_size))


def _open_ragged(folder: Path, split: str, name: str, tokenizer: Tokenizer) -> Ragged:
    return Ragged(folder, f"{split}.{name}", ids_dtype(tokenizer.vocab_size))


class PairExamples(Examples):
    """Source and target texts for sequence-to-sequence: ``labels`` are the target ids and ``<eos>``.

    Args:
        max_len: the most source ids, and the most label ids (``<eos>`` included); longer ones are cut.
    """

    fits = ("seq2seq",)

    def __init__(self, *, max_len: int) -> None:
        self.max_len = max_len

    def texts(self, examples: Sequence[tuple[str, str]]) -> Iterable[str]:
        return (text for pair in examples for text in pair)

    def write(
        self, folder: Path, split: str, examples: Sequence[Any], tokenizer: Tokenizer, label_names: list[str] | None
    ) -> None:
        sources, targets = _ragged(folder, split, "source", tokenizer), _ragged(folder, split, "target", tokenizer)
        for batch in batched(examples, ENCODE_BATCH):
            sources.extend(s[: self.max_len] for s in tokenizer.encode_batch([s for s, _ in batch]))
            encoded = tokenizer.encode_batch([t for _, t in batch])
            targets.extend(t[: self.max_len - 1] + [tokenizer.eos_id] for t in encoded)
        sources.close(), targets.close()

    def open(self, folder: Path, split: str, tokenizer: Tokenizer, train: bool) -> Dataset:
        return RowsDataset([_open_ragged(folder, split, name, tokenizer) for name in ("source", "target")])

    def collate(self, items: list[tuple[list[int], list[int]]], tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
        batch = inputs([s for s, _ in items], tokenizer.pad_id)
        batch["labels"] = pad([t for _, t in items], IGNORE_INDEX)
        return batch


class LabeledExamples(Examples):
    """Texts with one label each, for sequence classification: ``<bos>`` first (the pooled position).

    Args:
        max_len: the most ids per input, ``<bos>`` included.
    """

    fits = ("sequence_classification",)
    has_labels = True

    def __init__(self, *, max_len: int) -> None:
        self.max_len = max_len

    def texts(self, examples: Sequence[tuple[str, str]]) -> Iterable[str]:
        return (text for text, _ in examples)

    def label_names(self, splits: dict[str, Sequence[Any]], given: Sequence[str] | None) -> list[str]:
        return collect_labels({label for v in splits.values() for _, label in v}, given, "label(s)")

    def write(
        self, folder: Path, split: str, examples: Sequence[Any], tokenizer: Tokenizer, label_names: list[str] | None
    ) -> None:
        index = {name: i for i, name in enumerate(label_names or ())}
        ids, labels = _ragged(folder, split, "ids", tokenizer), ArrayWriter(folder / f"{split}.labels.bin", np.int64)
        for batch in batched(examples, ENCODE_BATCH):
            encoded = tokenizer.encode_batch([text for text, _ in batch])
            ids.extend([tokenizer.bos_id] + e[: self.max_len - 1] for e in encoded)
            labels.append([index[label] for _, label in batch])
        ids.close(), labels.close()

    def open(self, folder: Path, split: str, tokenizer: Tokenizer, train: bool) -> Dataset:
        labels = open_array(folder / f"{split}.labels.bin", np.int64)
        return RowsDataset([_open_ragged(folder, split, "ids", tokenizer), labels])

    def collate(self, items: list[tuple[list[int], int]], tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
        batch = inputs([ids for ids, _ in items], tokenizer.pad_id)
        batch["labels"] = torch.tensor([label for _, label in items], dtype=torch.long)
        return batch


class TaggedExamples(Examples):
    """Sentences with a tag per word, for token classification.

    A word's tag id sits on its first subword; other subwords, separators and pads get -100.

    Args:
        max_len: the most ids per sentence; longer sentences are cut (their last words lose their tags).
    """

    fits = ("token_classification",)
    has_labels = True

    def __init__(self, *, max_len: int) -> None:
        self.max_len = max_len

    def texts(self, examples: Sequence[tuple[list[str], list[str]]]) -> Iterable[str]:
        return (" ".join(tokens) for tokens, _ in examples)

    def label_names(self, splits: dict[str, Sequence[Any]], given: Sequence[str] | None) -> list[str]:
        return collect_labels({tag for v in splits.values() for _, tags in v for tag in tags}, given, "tag(s)")

    def write(
        self, folder: Path, split: str, examples: Sequence[Any], tokenizer: Tokenizer, label_names: list[str] | None
    ) -> None:
        index = {name: i for i, name in enumerate(label_names or ())}
        ids_out, labels_out = (
            _ragged(folder, split, "ids", tokenizer),
            RaggedWriter(folder, f"{split}.labels", np.int32),
        )
        for batch in batched(examples, ENCODE_BATCH):
            rows, label_rows = [], []
            for tokens, tags in batch:
                ids, words = tokenizer.encode_words(tokens)
                labels = [IGNORE_INDEX] * len(ids)
                last = None
                for position, word in enumerate(words):
                    if word is not None and word != last:
                        labels[position] = index[tags[word]]
                    last = word
                rows.append(ids[: self.max_len])
                label_rows.append(labels[: self.max_len])
            ids_out.extend(rows)
            labels_out.extend(label_rows)
        ids_out.close(), labels_out.close()

    def open(self, folder: Path, split: str, tokenizer: Tokenizer, train: bool) -> Dataset:
        return RowsDataset([_open_ragged(folder, split, "ids", tokenizer), Ragged(folder, f"{split}.labels", np.int32)])

    def from_record(self, value: Any) -> tuple[list[str], list[str]]:
        tokens, tags = value
        return list(tokens), list(tags)

    def collate(self, items: list[tuple[list[int], list[int]]], tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
        batch = inputs([ids for ids, _ in items], tokenizer.pad_id)
        batch["labels"] = pad([labels for _, labels in items], IGNORE_INDEX)
        return batch
