"""Data: DataModules over the user's files, installed corpora and synthetic tasks; tokenizers; readers.

| DataModule | feeds | sources |
| --- | --- | --- |
| :class:`TextDataModule` | causal_lm, masked_lm | text files, Shakespeare, Penn Treebank |
| :class:`PairsDataModule` | seq2seq | JSONL/TSV pairs, English-Spanish Bible, copy/reverse/sort/addition |
| :class:`LabeledDataModule` | sequence_classification | CSV/TSV/JSONL (text, label) |
| :class:`ConllDataModule` | token_classification | CoNLL columns, WNUT-16 |
| :class:`HFDataModule` | any of these | Hugging Face ``datasets``, local files or a saved dataset only |

Every DataModule prepares its data once into memory-mapped files, keyed by the files and the settings, and opens
them in every later run and process (:mod:`tfgraph.data.store`; ``tfgraph-prepare`` prepares ahead of training).
A mistake in a data config is a :class:`DataConfigError` (a ``tfgraph.ConfigError`` naming each key, also a
:class:`DataError`), found before any data is read; missing or malformed data is a :class:`DataError` naming the
file (and line). The checks live in :mod:`tfgraph.data.checks`.
"""

from tfgraph.data.datamodules import (
    ConllDataModule,
    ExamplesDataModule,
    HFDataModule,
    LabeledDataModule,
    PairsDataModule,
    TextDataModule,
)
from tfgraph.data.errors import DataConfigError, DataError
from tfgraph.data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer

__all__ = [
    "ConllDataModule",
    "DataConfigError",
    "DataError",
    "ExamplesDataModule",
    "HFDataModule",
    "LabeledDataModule",
    "PairsDataModule",
    "TextDataModule",
    "Tokenizer",
    "build_tokenizer",
    "load_tokenizer",
]
