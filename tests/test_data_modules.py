"""DataModules: splits, tokenizer reuse, batch shapes, padding and -100 labels; every data config instantiates."""

from __future__ import annotations

from pathlib import Path

import hydra.utils
import pytest
import torch

import tfgraph
from tfgraph.config import conf_dir
from tfgraph.data import (
    ConllDataModule,
    DataError,
    HFDataModule,
    LabeledDataModule,
    PairsDataModule,
    TextDataModule,
    load_tokenizer,
)
from tfgraph.data.examples import IGNORE_INDEX, ChunkDataset, split_text
from tfgraph.data.readers import read_pairs

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def first_batch(dm, split: str = "train") -> dict[str, torch.Tensor]:  # noqa: ANN001 - any DataModule
    dm.setup()
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    batch = next(iter(loader))
    assert all(v.dtype == torch.long for v in batch.values())
    return batch


def check_inputs(batch: dict[str, torch.Tensor]) -> None:
    """Real tokens where the mask is 1, pads (id 0) where it is 0."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape
    assert set(mask.unique().tolist()) <= {0, 1}
    assert (ids[mask == 0] == 0).all() and (ids[mask == 1] != 0).all()


# language modelling


def test_chunks_overlap_by_one_token_and_cover_every_target() -> None:
    stream = torch.arange(10)
    chunks = ChunkDataset(stream, block_size=4, drop_short=False)
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    short = ChunkDataset(torch.arange(12), block_size=4, drop_short=False)
    assert short[3].tolist() == [9, 10, 11]
    assert len(ChunkDataset(torch.arange(12), block_size=4, drop_short=True)) == 3
    targets = torch.cat([c[1:] for c in short])
    assert targets.tolist() == list(range(1, 12))  # with the causal shift, every token but the first once


def test_training_order_follows_the_seed_and_the_epoch() -> None:
    dm = PairsDataModule(path=str(FIXTURES / "pairs.jsonl"), tokenizer="char", batch_size=4)
    dm.setup()

    def order(seed: int, epoch: int) -> list[list[int]]:
        torch.manual_seed(seed)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [batch["input_ids"].tolist() for batch in loader]

    assert order(5, 0) == order(5, 0) != order(5, 1)
    assert order(5, 0) != order(6, 0)
    assert sorted(sum(order(5, 1), [])) == sorted(sum(order(6, 0), []))  # the same examples, once each


def test_split_text_cuts_each_text_at_line_ends() -> None:
    text = "".join(f"{i:02d}\n" for i in range(20))
    train, val, test = split_text([text, "x\ny\n"], 0.1, 0.1)
    assert train[0] + val[0] + test[0] == text
    assert val[0] == "16\n17\n" and test[0] == "18\n19\n"
    assert split_text(["0123456789\n" * 2], 0.25, 0.25)[0] == ["0123456789\n"]  # a line is never cut
    assert train[1] == "x\ny\n" and len(val) == len(test) == 1  # a two-line text keeps all in train


def test_text_datamodule_from_a_folder() -> None:
    dm = TextDataModule(path=str(FIXTURES / "corpus"), block_size=16, batch_size=4, val_fraction=0.2, test_fraction=0.2)
    batch = first_batch(dm)
    assert batch["input_ids"].shape == (4, 16) and batch["attention_mask"].all()
    assert dm.fits == ("causal_lm", "masked_lm") and dm.label_names is None and dm.name == "corpus"
    assert dm.tokenizer.kind == "char"
    assert len(dm.splits["train"]) == len(dm.splits["val"]) == len(dm.splits["test"]) == 2
    assert dm.splits["test"][0].endswith("Actions speak louder than words.\n")
    stream = dm.datasets["val"].stream
    assert (stream == dm.tokenizer.eos_id).sum() == 2  # one <eos> after each text
    last = dm.datasets["val"][len(dm.datasets["val"]) - 1]
    val_batch = dm.examples.collate([last], dm.tokenizer)
    check_inputs(val_batch)


def test_text_datamodule_split_files_split_lines_and_word_tokenizer() -> None:
    corpus = FIXTURES / "corpus"
    dm = TextDataModule(
        train_path=str(corpus / "alpha.txt"),
        val_path=str(corpus / "sub" / "beta.txt"),
        test_path=str(corpus / "sub" / "beta.txt"),
        block_size=8,
        batch_size=2,
        split_lines=True,
        tokenizer="word",
    )
    batch = first_batch(dm, "val")
    check_inputs(batch)
    assert len(dm.splits["train"]) == 1  # nothing held out: each split has its file
    eos = (dm.datasets["train"].stream == dm.tokenizer.eos_id).sum()
    assert eos == 10  # one per line
    words = dm.tokenizer.decode(dm.datasets["train"].stream[:10].tolist(), skip_special=False)
    assert words == "The quick brown fox jumps over the lazy dog. <eos>"


def test_tokenizer_reuse(tmp_path: Path) -> None:
    dm = TextDataModule(path=str(FIXTURES / "corpus"), block_size=8, tokenizer="bpe", vocab_size=300)
    dm.setup()
    dm.tokenizer.save(tmp_path / "tokenizer.json")
    for reuse in ({"tokenizer_json": dm.tokenizer.to_json()}, {"tokenizer_path": str(tmp_path / "tokenizer.json")}):
        other = TextDataModule(path=str(FIXTURES / "corpus" / "alpha.txt"), block_size=8, tokenizer="char", **reuse)
        other.setup()
        assert other.tokenizer.kind == "bpe" and other.tokenizer.to_json() == dm.tokenizer.to_json()
    assert load_tokenizer(tmp_path / "tokenizer.json").vocab_size == dm.tokenizer.vocab_size


# pairs


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.tsv"])
def test_pairs_datamodule(name: str) -> None:
    dm = PairsDataModule(path=str(FIXTURES / name), batch_size=8, tokenizer="word", max_len=16)
    batch = first_batch(dm)
    check_inputs(batch)
    labels = batch["labels"]
    assert labels.shape[0] == 8 and dm.fits == ("seq2seq",)
    for row in labels:
        real = row[row != IGNORE_INDEX]
        assert real[-1] == dm.tokenizer.eos_id and (row[len(real) :] == IGNORE_INDEX).all()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [16, 2, 2]


def test_pairs_held_out_split_follows_the_seed() -> None:
    def split(seed: int) -> list:
        dm = PairsDataModule(path=str(FIXTURES / "pairs.jsonl"), tokenizer="char", seed=seed)
        dm.setup()
        return dm.splits["test"]

    assert split(0) == split(0) != split(1)


def test_pairs_truncation_keeps_eos() -> None:
    dm = PairsDataModule(path=str(FIXTURES / "pairs.tsv"), tokenizer="char", max_len=5, batch_size=20)
    batch = first_batch(dm)
    assert batch["input_ids"].shape[1] == 5 and batch["labels"].shape[1] == 5
    assert (batch["labels"][:, -1] == dm.tokenizer.eos_id).all()


@pytest.mark.parametrize("task", ["copy", "reverse", "sort", "addition"])
def test_synthetic_pairs_datamodule(task: str) -> None:
    options = {"n_train": 64, "n_val": 8, "n_test": 8, "max_length": 6}
    dm = PairsDataModule(source=task, tokenizer="char", batch_size=16, source_options=options)
    batch = first_batch(dm, "test")
    tok = dm.tokenizer
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        source, target = tok.decode(ids.tolist()), tok.decode(labels[labels != IGNORE_INDEX].tolist())
        expected = {
            "copy": source,
            "reverse": source[::-1],
            "sort": "".join(sorted(source)),
            "addition": str(sum(map(int, source.split("+")))) if "+" in source else None,
        }[task]
        assert target == expected
    assert dm.name == task and len(dm.splits["train"]) == 64


# classification


def test_labeled_datamodule_csv() -> None:
    dm = LabeledDataModule(path=str(FIXTURES / "labeled.csv"), batch_size=4, tokenizer="wordpiece", vocab_size=120)
    batch = first_batch(dm)
    check_inputs(batch)
    assert batch["labels"].shape == (4,) and (batch["input_ids"][:, 0] == dm.tokenizer.bos_id).all()
    assert dm.label_names == ["neg", "pos"] and dm.fits == ("sequence_classification",)
    text, label = dm.splits["train"][0]
    ids, label_id = dm.datasets["train"][0]
    assert dm.label_names[label_id] == label and dm.tokenizer.decode(ids).replace(" ", "") == text.replace(" ", "")


def test_labeled_datamodule_numeric_labels_and_given_names() -> None:
    dm = LabeledDataModule(path=str(FIXTURES / "labeled.jsonl"), tokenizer="byte")
    dm.setup()
    assert dm.label_names == ["0", "1"]
    given = LabeledDataModule(path=str(FIXTURES / "labeled.jsonl"), tokenizer="byte", label_names=["1", "0"])
    given.setup()
    assert given.label_names == ["1", "0"] and given.datasets["train"][0][1] == 0  # "1" is id 0 now
    wrong = LabeledDataModule(path=str(FIXTURES / "labeled.csv"), tokenizer="byte", label_names=["pos"])
    with pytest.raises(DataError, match="label\\(s\\) 'neg' not among the given label_names"):
        wrong.setup()


# tagging


@pytest.mark.parametrize("kind", ["char", "word", "bpe", "wordpiece", "unigram"])
def test_conll_datamodule_labels_on_first_subwords(kind: str) -> None:
    sizes = {"bpe": 300, "wordpiece": 120, "unigram": 60}
    dm = ConllDataModule(
        path=str(FIXTURES / "tags.conll"), tokenizer=kind, vocab_size=sizes.get(kind), batch_size=8, test_fraction=0
    )
    batch = first_batch(dm)
    check_inputs(batch)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert dm.label_names[0] == "O"
    assert len(dm.splits["test"]) == 0 and dm.test_dataloader() == []
    for (tokens, tags), (ids, labels) in zip(dm.splits["train"], dm.datasets["train"].items, strict=True):
        tagged = [dm.label_names[i] for i in labels if i != IGNORE_INDEX]
        assert tagged == tags  # one label per word, in order
        _, words = dm.tokenizer.encode_words(tokens)
        firsts = [p for p, w in enumerate(words) if w is not None and w not in words[:p]]
        assert [p for p, label in enumerate(labels) if label != IGNORE_INDEX] == firsts  # on each first subword
        assert len(ids) == len(labels) and labels[0] != IGNORE_INDEX


def test_conll_label_order() -> None:
    dm = ConllDataModule(path=str(FIXTURES / "tags.conll"), tokenizer="word")
    dm.setup()
    assert dm.label_names == ["O", "B-LOC", "B-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


# Hugging Face datasets


def test_hf_datamodule_json_files_seq2seq(tmp_path: Path) -> None:
    dm = HFDataModule(
        task="seq2seq", train_path=str(FIXTURES / "pairs.jsonl"), tokenizer="word", cache_dir=str(tmp_path)
    )
    batch = first_batch(dm)
    check_inputs(batch)
    assert "labels" in batch and dm.fits == ("seq2seq",)
    rows = dm.splits["train"] + dm.splits["val"] + dm.splits["test"]
    assert sorted(rows) == sorted(read_pairs(FIXTURES / "pairs.jsonl"))


def test_hf_datamodule_split_files_numeric_labels(tmp_path: Path) -> None:
    jsonl = str(FIXTURES / "labeled.jsonl")
    dm = HFDataModule(
        task="sequence_classification", train_path=jsonl, val_path=jsonl, tokenizer="char", cache_dir=str(tmp_path)
    )
    batch = first_batch(dm, "val")
    assert dm.label_names == ["0", "1"] and batch["labels"].dim() == 1
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [18, 20, 2]  # test held out of train


def test_hf_datamodule_saved_dataset_with_class_labels(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner": datasets.Sequence(datasets.ClassLabel(names=["O", "B-X", "I-X"])),
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["neg", "pos"]),
        }
    )
    rows = {
        "tokens": [["a", "b", "c"], ["b", "c"], ["c"], ["a", "a"]],
        "ner": [[1, 2, 0], [0, 1], [0], [1, 1]],
        "sentence": ["a b c", "b c", "c", "a a"],
        "label": [1, 0, 0, 1],
    }
    data = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": data, "validation": data.select([0]), "test": data.select([1])}).save_to_disk(
        str(tmp_path / "saved")
    )
    tagging = HFDataModule(
        task="token_classification", path=str(tmp_path / "saved"), tags_column="ner", tokenizer="word"
    )
    batch = first_batch(tagging, "val")
    assert tagging.label_names == ["O", "B-X", "I-X"]
    assert batch["labels"].tolist() == [[1, 2, 0]]
    classes = HFDataModule(
        task="sequence_classification", path=str(tmp_path / "saved"), text_column="sentence", tokenizer="char"
    )
    batch = first_batch(classes, "test")
    assert classes.label_names == ["neg", "pos"] and batch["labels"].tolist() == [0]
    missing = HFDataModule(task="sequence_classification", path=str(tmp_path / "saved"), tokenizer="char")
    with pytest.raises(DataError, match="no column\\(s\\) 'text'.*the columns are tokens, ner, sentence, label"):
        missing.setup()


def test_hf_datamodule_text_lm(tmp_path: Path) -> None:
    dm = HFDataModule(
        task="causal_lm",
        path=str(FIXTURES / "corpus" / "alpha.txt"),
        block_size=8,
        tokenizer="char",
        cache_dir=str(tmp_path),
    )
    batch = first_batch(dm)
    assert batch["input_ids"].shape[1] == 8
    assert len(dm.splits["train"]) == 8 and len(dm.splits["val"]) == 1  # rows (lines) held out whole


# errors


def test_datamodule_errors() -> None:
    with pytest.raises(DataError, match="exactly one"):
        PairsDataModule(path="a.jsonl", train_path="b.jsonl").setup()
    with pytest.raises(DataError, match="exactly one"):
        LabeledDataModule().setup()
    with pytest.raises(DataError, match="unknown text source 'shakespear'.*did you mean 'shakespeare'"):
        TextDataModule(source="shakespear")
    with pytest.raises(DataError, match="unknown source_options lenght; its options: n_train"):
        PairsDataModule(source="copy", source_options={"lenght": 3}).setup()
    with pytest.raises(DataError, match="val_fraction"):
        TextDataModule(path="x", val_fraction=0.6, test_fraction=0.6)
    with pytest.raises(DataError, match=f"{FIXTURES / 'pairs_bad.tsv'}:2:"):
        PairsDataModule(path=str(FIXTURES / "pairs_bad.tsv")).setup()
    with pytest.raises(DataError, match="setup"):
        PairsDataModule(path=str(FIXTURES / "pairs.tsv")).train_dataloader()
    with pytest.raises(TypeError, match="block_sise"):
        TextDataModule(path="x", block_sise=3)  # an unknown config key is never dropped


# configs


def compose_data(name: str, *overrides: str):  # noqa: ANN201 - a DictConfig
    """The ``data`` node of the train config with data config ``name`` (added, or swapped for the default)."""
    prefix = "" if "data" in tfgraph.compose() else "+"
    return tfgraph.compose([f"{prefix}data={name}", *overrides]).data


@pytest.mark.parametrize("name", sorted(p.stem for p in (conf_dir() / "data").glob("*.yaml")))
def test_every_data_config_instantiates(name: str) -> None:
    overrides = ["data.task=causal_lm", "data.path=x.txt"] if name == "hf" else []
    dm = hydra.utils.instantiate(compose_data(name, *overrides))
    assert dm.fits and dm.name


def test_synthetic_config_runs() -> None:
    cfg = compose_data("reverse", "data.source_options.n_train=32", "data.batch_size=4")
    batch = first_batch(hydra.utils.instantiate(cfg))
    assert batch["input_ids"].shape[0] == 4


def test_keys_that_do_not_apply_are_refused() -> None:
    with pytest.raises(DataError, match="path given, but the data comes from source 'reverse'"):
        PairsDataModule(source="reverse", path="pairs.jsonl")
    with pytest.raises(DataError, match="source_options apply to the corpus and synthetic sources"):
        TextDataModule(path="book.txt", source_options={"cache_root": "/tmp"})
    with pytest.raises(DataError, match="train_path given, but the data comes from source 'wnut16'"):
        ConllDataModule(source="wnut16", train_path="x.conll")
