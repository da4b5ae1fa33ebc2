"""Data: DataModules over the user's files, installed corpora and synthetic tasks; tokenizers; readers.

| DataModule | feeds | sources |
| --- | --- | --- |
| :class:`TextDataModule` | causal_lm, masked_lm | text files, Shakespeare, Penn Treebank |
| :class:`PairsDataModule` | seq2seq | JSONL/TSV pairs, English-Spanish Bible, copy/reverse/sort/addition |
| :class:`LabeledDataModule` | sequence_classification | CSV/TSV/JSONL (text, label) |
| :class:`ConllDataModule` | token_classification | CoNLL columns, WNUT-16 |
| :class:`HFDataModule` | any of these | Hugging Face ``datasets``, local files or a saved dataset only |
"""

from tfgraph.data.datamodules import (
    ConllDataModule,
    ExamplesDataModule,
    HFDataModule,
    LabeledDataModule,
    PairsDataModule,
    TextDataModule,
)
from tfgraph.data.errors import DataError
from tfgraph.data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer

__all__ = [
    "ConllDataModule",
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
