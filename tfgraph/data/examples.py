"""How each shape of example is held out, tokenized and batched; the DataModules share these.

| examples | shape | tasks | batch |
| --- | --- | --- | --- |
| :class:`TextExamples` | texts | causal_lm, masked_lm | ``input_ids, attention_mask`` ``[B, T]`` |
| :class:`PairExamples` | ``(source, target)`` | seq2seq | ``input_ids, attention_mask [B, S]``, ``labels [B, T]`` |
| :class:`LabeledExamples` | ``(text, label)`` | sequence_classification | ``input_ids, attention_mask [B, T]``, ``labels [B]`` |
| :class:`TaggedExamples` | ``(tokens, tags)`` | token_classification | ``input_ids, attention_mask, labels [B, T]`` |

Padding is ``<pad>`` (id 0) in ``input_ids`` with ``attention_mask`` 0, and -100 in ``labels``.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tfgraph.data.errors import DataError
from tfgraph.data.tokenizers import Tokenizer

IGNORE_INDEX = -100


class ListDataset(Dataset):
    """A map-style dataset over a list of already encoded items."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


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
        return self.stream[start : start + self.block_size]


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
        return iter(torch.randperm(self.n, generator=generator).tolist())

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
        return {"batches_yielded": done if done < len(self) else 0}  # a finished epoch resumes with a new one

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


def hold_out(examples: Sequence[Any], val_fraction: float, test_fraction: float, seed: int) -> tuple[list, ...]:
    """``(train, val, test)``: a seeded random share of the examples for val and test, the rest, in order, train."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val, n_test = round(len(order) * val_fraction), round(len(order) * test_fraction)
    val, test = sorted(order[:n_val]), sorted(order[n_val : n_val + n_test])
    train = sorted(order[n_val + n_test :])
    return tuple([examples[i] for i in part] for part in (train, val, test))


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


def collect_labels(splits: dict[str, Sequence[Sequence[str]]], given: Sequence[str] | None, what: str) -> list[str]:
    """The label names: ``given`` (checked to cover every split's labels), or every label seen, sorted."""
    seen = {label for labels_of_split in splits.values() for labels in labels_of_split for label in labels}
    if given is None:
        return sorted(seen, key=_label_order)
    names = [str(n) for n in given]
    unknown = sorted(seen - set(names), key=_label_order)
    if unknown:
        raise DataError(f"{what} {', '.join(map(repr, unknown))} not among the given label_names {names}")
    return names


class Examples(ABC):
    """How one shape of example is held out, tokenized and batched."""

    fits: tuple[str, ...]
    has_labels = False

    def hold_out(self, examples: Sequence[Any], val_fraction: float, test_fraction: float, seed: int) -> tuple:
        """``(train, val, test)`` taken from one list of examples."""
        return hold_out(examples, val_fraction, test_fraction, seed)

    @abstractmethod
    def texts(self, examples: Sequence[Any]) -> Iterable[str]:
        """The texts a tokenizer is trained on."""

    def label_names(self, splits: dict[str, Sequence[Any]], given: Sequence[str] | None) -> list[str] | None:
        """The names of the label ids (None: this kind has no labels)."""
        return None

    @abstractmethod
    def dataset(
        self, examples: Sequence[Any], tokenizer: Tokenizer, label_names: list[str] | None, train: bool
    ) -> Dataset:
        """The encoded examples of one split."""

    @abstractmethod
    def collate(self, items: list[Any], tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
        """One batch of dataset items."""


class TextExamples(Examples):
    """Texts for language modelling, cut into windows of ``block_size`` tokens.

    The texts are tokenized, each followed by ``<eos>``, and joined into one stream (see
    :class:`ChunkDataset`).

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

    def _documents(self, texts: Sequence[str]) -> list[str]:
        if not self.split_lines:
            return list(texts)
        return [line.strip() for text in texts for line in text.split("\n") if line.strip()]

    def texts(self, examples: Sequence[str]) -> Iterable[str]:
        return self._documents(examples)

    def stream(self, examples: Sequence[str], tokenizer: Tokenizer) -> torch.Tensor:
        """``[N]`` ids of every text, each followed by ``<eos>``."""
        ids: list[int] = []
        for encoded in tokenizer.encode_batch(self._documents(examples)):
            ids += encoded
            ids.append(tokenizer.eos_id)
        return torch.tensor(ids, dtype=torch.long)

    def dataset(
        self, examples: Sequence[Any], tokenizer: Tokenizer, label_names: list[str] | None, train: bool
    ) -> Dataset:
        return ChunkDataset(self.stream(examples, tokenizer), self.block_size, drop_short=train)

    def collate(self, items: list[torch.Tensor], tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
        return inputs(items, tokenizer.pad_id)


class PairExamples(Examples):
    """Source and target texts for sequence-to-sequence: ``labels`` are the target ids and ``<eos>``.

    Args:
        max_len: the most source ids, and the most label ids (``<eos>`` included); longer ones are cut.
    """

    fits = ("seq2seq",)

    def __init__(self, *, max_len: int) -> None:
        self.max_len = max_len

    def texts(self, examples: Sequence[tuple[str, str]]) -> Iterable[str]:
        return [text for pair in examples for text in pair]

    def dataset(
        self, examples: Sequence[Any], tokenizer: Tokenizer, label_names: list[str] | None, train: bool
    ) -> Dataset:
        sources = tokenizer.encode_batch([s for s, _ in examples])
        targets = tokenizer.encode_batch([t for _, t in examples])
        return ListDataset(
            [
                (s[: self.max_len], t[: self.max_len - 1] + [tokenizer.eos_id])
                for s, t in zip(sources, targets, strict=True)
            ]
        )

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
        return [text for text, _ in examples]

    def label_names(self, splits: dict[str, Sequence[Any]], given: Sequence[str] | None) -> list[str]:
        return collect_labels({k: [[label] for _, label in v] for k, v in splits.items()}, given, "label(s)")

    def dataset(
        self, examples: Sequence[Any], tokenizer: Tokenizer, label_names: list[str] | None, train: bool
    ) -> Dataset:
        index = {name: i for i, name in enumerate(label_names)}
        encoded = tokenizer.encode_batch([text for text, _ in examples])
        return ListDataset(
            [
                ([tokenizer.bos_id] + ids[: self.max_len - 1], index[label])
                for ids, (_, label) in zip(encoded, examples, strict=True)
            ]
        )

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
        return [" ".join(tokens) for tokens, _ in examples]

    def label_names(self, splits: dict[str, Sequence[Any]], given: Sequence[str] | None) -> list[str]:
        return collect_labels({k: [tags for _, tags in v] for k, v in splits.items()}, given, "tag(s)")

    def dataset(
        self, examples: Sequence[Any], tokenizer: Tokenizer, label_names: list[str] | None, train: bool
    ) -> Dataset:
        index = {name: i for i, name in enumerate(label_names)}
        items = []
        for tokens, tags in examples:
            ids, words = tokenizer.encode_words(tokens)
            labels = [IGNORE_INDEX] * len(ids)
            last = None
            for position, word in enumerate(words):
                if word is not None and word != last:
                    labels[position] = index[tags[word]]
                last = word
            items.append((ids[: self.max_len], labels[: self.max_len]))
        return ListDataset(items)

    def collate(self, items: list[tuple[list[int], list[int]]], tokenizer: Tokenizer) -> dict[str, torch.Tensor]:
        batch = inputs([ids for ids, _ in items], tokenizer.pad_id)
        batch["labels"] = pad([labels for _, labels in items], IGNORE_INDEX)
        return batch
