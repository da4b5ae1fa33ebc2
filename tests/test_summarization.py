"""Summarization: Debian's package descriptions as a corpus (tfgraph.data.debian), ROUGE in seq2seq, and a tiny run.

The corpus tests read small fixture lists (tests/fixtures/data/debian/); one more reads this machine's own apt
lists where `apt-get -o Acquire::Languages=en update` brought them, and skips elsewhere.
"""

from __future__ import annotations

import gzip
import json
import lzma
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

import tfgraph
from tfgraph.data import DataConfigError, DataError, PairsDataModule, debian
from tfgraph.tasks.metrics import Rouge
from tfgraph.tasks.seq2seq import METRICS, check_decoding
from tfgraph.train import train

FIXTURES = Path(__file__).parent / "fixtures" / "data" / "debian"
MAIN = "deb.example.org_debian_dists_stable_main_i18n_Translation-en"
SECURITY = "deb.example.org_debian-security_dists_stable-security_main_i18n_Translation-en"
PACKAGES = "deb.example.org_debian_dists_stable_main_binary-amd64_Packages"
FOO = {"foo", "foo-dev", "foo-doc", "python3-foo", "libfoo1"}
FRUITS = (
    "apple banana cherry damson elder fig grape hazel iris juniper kale lemon mango nectar olive pear quince radish "
    "sage thyme ugli vanilla walnut yarrow"
).split()


@pytest.fixture
def lists(tmp_path: Path) -> Path:
    """A copy of the fixture lists (a test may touch or compress them)."""
    folder = tmp_path / "lists"
    shutil.copytree(FIXTURES, folder)
    return folder


# ------------------------------------------------------------------------------------- the description format


def test_unwrap_joins_wrapped_lines_paragraphs_and_list_items() -> None:
    lines = [
        " Foo frobnicates files, quickly and",
        " safely.",
        " .",
        " Features:",
        "  * frobnicates in",
        "    place",
        "  * keeps backups",
        "      - nested, verbatim",
        "  a verbatim line",
        " .",
        " See the   manual.",
    ]
    assert debian.unwrap_description(lines) == (
        "Foo frobnicates files, quickly and safely. Features: * frobnicates in place * keeps backups "
        "* nested, verbatim a verbatim line See the manual."
    )
    assert debian.unwrap_description([" .", " ."]) == ""
    assert debian.unwrap_description([]) == ""
    # a bullet with one leading space (common, though Policy wants two) and its wrapped continuation
    assert debian.unwrap_description([" Does:", " - one", " thing", " .", " Done."]) == "Does: * one thing Done."


def test_stanzas_keep_only_the_fields_asked_for() -> None:
    lines = ["Package: a", "Version: 1", "Description: x", " more", "", "", "Package: b", "Source: c (1.0)"]
    stanzas = list(debian.iter_stanzas(lines, ("Package", "Source", "Description")))
    assert stanzas == [{"Package": ["a"], "Description": ["x", " more"]}, {"Package": ["b"], "Source": ["c (1.0)"]}]


@pytest.mark.parametrize(
    ("package", "name"),
    [
        ("foo", "foo"),
        ("foo-dev", "foo"),
        ("foo-doc", "foo"),
        ("python3-foo", "foo"),
        ("libfoo1", "foo"),
        ("libfoo2.0-0t64", "foo"),
        ("libfoo-perl", "foo"),
        ("r-cran-ggplot2", "ggplot"),
        ("gir1.2-gtk-3.0", "gtk"),
        ("7zip", "7zip"),  # nothing left to cut
        ("0ad-data-common", "0ad"),
    ],
)
def test_family_cuts_prefixes_suffixes_and_versions(package: str, name: str) -> None:
    assert debian.family(package) == name


# ------------------------------------------------------------------------------------------------ the corpus


def test_fixture_corpus_counts_groups_and_pairs(lists: Path, tmp_path: Path) -> None:
    entries, counts = debian.load_or_prepare(lists, cache_root=tmp_path / "cache")
    # 2 entries in the security list (read first: sorted paths), 34 in main
    assert (counts.lists, counts.read, counts.packages_lists) == (2, 36, 1)
    assert (counts.dropped_empty, counts.dropped_duplicate, counts.duplicate_same_package) == (2, 2, 1)
    assert counts.kept == len(entries) == 32
    packages = Counter(e.package for e in entries)
    assert packages["apple"] == 2  # its fixed description and the old one differ: both kept
    assert {"empty", "dots", "copycat"}.isdisjoint(packages)  # empty, empty, a copy of bar-utils' text
    groups = {e.package: e.group for e in entries}
    assert {groups[p] for p in FOO} == {"foo"}  # one family
    assert groups["bar-utils"] == groups["baz"] == "bar-utils"  # one source package (qux), two families
    assert counts.groups == 1 + 1 + len(FRUITS) and counts.largest_group == 5
    assert counts.with_source == 3  # foo, bar-utils, baz are in the Packages list
    foo = next(e for e in entries if e.package == "foo")
    assert foo.summary == "frobnicate files quickly"
    assert foo.document.startswith("Foo frobnicates files, quickly and safely. Features: * frobnicates in place")


def test_splits_keep_groups_whole_and_are_deterministic(lists: Path, tmp_path: Path) -> None:
    options = {"cache_root": tmp_path / "cache", "val_fraction": 0.3, "test_fraction": 0.3}
    entries, _ = debian.load_or_prepare(lists, cache_root=options["cache_root"])
    group_of = {e.document: e.group for e in entries}
    for seed in range(5):
        splits = debian.debian_descriptions(lists, seed=seed, **options)
        assert sum(map(len, splits.values())) == 32
        split_of_group: dict[str, str] = {}
        for split, pairs in splits.items():
            for document, _summary in pairs:
                assert split_of_group.setdefault(group_of[document], split) == split, "a group on two sides"
        assert splits == debian.debian_descriptions(lists, seed=seed, **options)
    splits = debian.debian_descriptions(lists, seed=0, **options)
    assert all(splits.values()), {k: len(v) for k, v in splits.items()}  # 26 groups: each split has some
    assert debian.debian_descriptions(lists, seed=0, **options) != debian.debian_descriptions(lists, seed=1, **options)


def test_the_cache_is_read_until_a_list_changes(lists: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = debian.load_or_prepare(lists, cache_root=cache)
    (cached,) = (cache / "debian_descriptions").glob("pairs-*.jsonl")
    assert json.loads(cached.read_text().splitlines()[0])["read"] == 36

    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsed the lists again")

    monkeypatch.setattr(debian, "prepare", no_parsing)
    assert debian.load_or_prepare(lists, cache_root=cache) == first
    monkeypatch.undo()
    with (lists / MAIN).open("a") as handle:  # a new list: new size and time, so a new cache (the old one goes)
        handle.write("\nPackage: zucchini\nDescription-en: a new one\n A new package.\n")
    entries, counts = debian.load_or_prepare(lists, cache_root=cache)
    assert counts.read == 37 and entries[-1].package == "zucchini"
    assert [p.name for p in (cache / "debian_descriptions").iterdir()] != [cached.name]
    assert len(list((cache / "debian_descriptions").iterdir())) == 1


@pytest.mark.parametrize("apt_helper", [debian.APT_HELPER, None], ids=["apt-helper", "python"])
def test_compressed_lists_read_as_the_plain_ones(lists: Path, tmp_path: Path, apt_helper: str | None) -> None:
    if apt_helper and not Path(apt_helper).is_file():
        pytest.skip(f"{apt_helper} is not installed (Debian's apt package)")
    plain = list(debian.read_descriptions(lists / MAIN, apt_helper=apt_helper))
    for suffix, opener in ((".gz", gzip.open), (".xz", lzma.open)):
        packed = tmp_path / f"{MAIN}{suffix}"
        with opener(packed, "wb") as handle:
            handle.write((lists / MAIN).read_bytes())
        assert list(debian.read_descriptions(packed, apt_helper=apt_helper)) == plain
    assert len(plain) == 34


def test_a_list_python_cannot_open_names_apt(tmp_path: Path) -> None:
    odd = tmp_path / f"{MAIN}.lz4"
    odd.write_bytes(b"\x04\x22\x4d\x18")
    with pytest.raises(DataError, match=r"\.lz4 list needs apt's /usr/lib/apt/apt-helper"):
        list(debian.read_descriptions(odd, apt_helper=None))


def test_no_lists_says_which_command_brings_them(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no \*Translation-en\* list.*`apt-get -o Acquire::Languages=en update`"):
        debian.debian_descriptions(tmp_path)
    with pytest.raises(DataError, match="no such folder.*apt-get -o Acquire::Languages=en update"):
        debian.debian_descriptions(tmp_path / "missing")


def fixture_data(lists: Path, tmp_path: Path) -> list[str]:
    """Overrides of data=debian_descriptions that read the fixture lists, cached under tmp_path."""
    return [
        "data=debian_descriptions",
        f"data.source_options.lists_dir={lists}",
        f"data.source_options.cache_root={tmp_path / 'cache'}",
        "data.tokenizer=char",
        "data.vocab_size=null",
        "data.val_fraction=0.3",
        "data.test_fraction=0.3",
    ]


def test_data_config_debian_descriptions(lists: Path, tmp_path: Path) -> None:
    cfg = tfgraph.compose(
        [
            *fixture_data(lists, tmp_path),
        ]
    )
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    assert isinstance(dm, PairsDataModule) and dm.name == "debian_descriptions"
    dm.setup()
    assert sum(len(dm.splits[s]) for s in ("train", "val", "test")) == 32
    assert all(isinstance(d, str) and isinstance(s, str) for d, s in dm.splits["train"])
    with pytest.raises(DataConfigError, match=r"data.source_options: unknown source_options list_dir.*lists_dir"):
        PairsDataModule(source="debian_descriptions", source_options={"list_dir": str(lists)})


def test_the_machines_own_lists() -> None:
    try:
        translations, _ = debian.find_lists()
    except DataError as err:
        pytest.skip(str(err))
    splits = debian.debian_descriptions()  # cached under $TFGRAPH_CACHE after the first run
    sizes = {split: len(pairs) for split, pairs in splits.items()}
    assert sum(sizes.values()) > 10_000 and min(sizes.values()) > 100, sizes
    assert all(document and summary for pairs in splits.values() for document, summary in pairs[:1000])
    documents = [d for pairs in splits.values() for d, _ in pairs]
    assert len(set(documents)) == len(documents)  # no long description twice


# ----------------------------------------------------------------------------------------------------- ROUGE


def ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def f1(hits: int, predicted: int, reference: int) -> float:
    if not hits:
        return 0.0
    p, r = hits / predicted, hits / reference
    return 100 * 2 * p * r / (p + r)


def direct_rouge(pred: str, ref: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 as Lin (2004) defines it, on lowercased whitespace-split words."""
    p, r = pred.lower().split(), ref.lower().split()
    out = {}
    for n in (1, 2):
        pn, rn = ngrams(p, n), ngrams(r, n)
        out[f"rouge{n}"] = f1(sum((pn & rn).values()), sum(pn.values()), sum(rn.values()))
    out["rougeL"] = f1(lcs(p, r), len(p), len(r))
    return out


def rouge(preds: list[str], refs: list[str], keys: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")) -> dict:
    metric = Rouge(keys)
    metric.update(preds, refs)
    return {k: float(v) for k, v in metric.compute().items()}


def test_rouge_by_hand() -> None:
    # "the cat sat on the mat" / "the cat lay on the mat": 5 of 6 words shared (the x2, cat, on, mat), 3 of 5
    # bigrams (the cat, on the, the mat), an LCS of 5 words: F1 83.33, 60, 83.33.
    # "a b c" / "a b c d e": P 1, R 3/5 -> F1 75; bigrams P 1, R 2/4 -> 66.67; LCS 3 -> 75.
    assert rouge(["the cat sat on the mat"], ["the cat lay on the mat"]) == pytest.approx(
        {"rouge1": 500 / 6, "rouge2": 60.0, "rougeL": 500 / 6}, abs=1e-4
    )
    assert rouge(["a b c"], ["a b c d e"]) == pytest.approx({"rouge1": 75, "rouge2": 200 / 3, "rougeL": 75}, abs=1e-4)
    both = rouge(["the cat sat on the mat", "a b c"], ["the cat lay on the mat", "a b c d e"])  # the mean of pairs
    assert both == pytest.approx({"rouge1": (500 / 6 + 75) / 2, "rouge2": (60 + 200 / 3) / 2, "rougeL": 475 / 6})
    assert rouge(["The Cat, sat!"], ["the cat sat"])["rouge1"] == pytest.approx(100)  # case and punctuation
    assert rouge(["completely different"], ["nothing shared"]) == {"rouge1": 0, "rouge2": 0, "rougeL": 0}
    assert rouge(["c b a"], ["a b c"]) == pytest.approx({"rouge1": 100, "rouge2": 0, "rougeL": 100 / 3})


def test_rouge_matches_a_direct_computation_on_random_strings() -> None:
    rng = random.Random(0)
    vocab = "a b c d e f".split()
    preds = [" ".join(rng.choices(vocab, k=rng.randint(1, 12))) for _ in range(50)]
    refs = [" ".join(rng.choices(vocab, k=rng.randint(1, 12))) for _ in range(50)]
    pairs = list(zip(preds, refs, strict=True))
    expected = {k: sum(direct_rouge(p, r)[k] for p, r in pairs) / 50 for k in ("rouge1", "rouge2", "rougeL")}
    metric = Rouge(("rouge1", "rouge2", "rougeL"))
    for i in range(0, 50, 16):  # over batches, as val/test update it
        metric.update(preds[i : i + 16], refs[i : i + 16])
    assert {k: float(v) for k, v in metric.compute().items()} == pytest.approx(expected, abs=1e-4)


def test_rouge_lsum_unions_the_lcs_over_sentences(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nltk = pytest.importorskip("nltk", reason="rougeLsum splits sentences with nltk (pip install nltk)")
    # a Punkt model with no learned abbreviations or collocations: it splits at a full stop and a capital
    model = tmp_path / "tokenizers" / "punkt_tab" / "english"
    model.mkdir(parents=True)
    for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        (model / name).write_text("")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    # rougeL: the LCS of the whole texts is 3 of 6 words (50); rougeLsum: each reference sentence's union LCS
    # with the predicted sentences is all of it (100)
    scores = rouge(["The cat sat. The dog ran."], ["The dog ran. The cat sat."], ("rougeL", "rougeLsum"))
    assert scores == pytest.approx({"rougeL": 50.0, "rougeLsum": 100.0})
    check_decoding(metrics=["rougeLsum"])  # available: no error
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "none")])
    with pytest.raises(tfgraph.ConfigError, match=r"task.metrics: rougeLsum .*punkt_tab.*nltk.downloader punkt_tab"):
        check_decoding(metrics=["rouge1", "rougeLsum"])


def test_unknown_metric_is_a_config_error_listing_the_known_ones() -> None:
    with pytest.raises(tfgraph.ConfigError) as err:
        check_decoding(metrics=["bleu", "rouge3", "rogueL"])
    message = str(err.value)
    assert "task.metrics: unknown metric 'rouge3' (did you mean 'rougeL' or 'rouge2' or 'rouge1'?)" in message
    assert "unknown metric 'rogueL' (did you mean 'rougeL'" in message
    assert "seq2seq's metrics are " + ", ".join(METRICS) in message
    with pytest.raises(tfgraph.ConfigError, match="task.metrics: expected a list of metric names"):
        check_decoding(metrics="rouge1")
    with pytest.raises(tfgraph.ConfigError, match=r"task.num_beams: .*got 0[\s\S]*task.test_num_beams"):
        check_decoding(num_beams=0, test_num_beams=1.5)


# ----------------------------------------------------------------------------------------- a tiny seq2seq run


@pytest.mark.parametrize("model", ["transformer_tiny", "gpt2_tiny"])
def test_a_tiny_summarization_run_logs_rouge(lists: Path, tmp_path: Path, model: str) -> None:
    layers = ["model.n_decoder_layers=1"] if model == "transformer_tiny" else []
    cfg = tfgraph.compose(
        [
            f"model={model}",
            "task=seq2seq",
            *fixture_data(lists, tmp_path),
            "data.batch_size=4",
            "data.max_len=48",
            "model.n_layers=1",
            *layers,
            "model.max_len=128",
            "task.metrics=[bleu,chrf,rouge1,rouge2,rougeL]",
            "task.max_new_tokens=8",
            "task.test_num_beams=2",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "trainer.num_sanity_val_steps=0",
            "~logger",
            "callbacks=checkpoints",
            "optimized_metric=val/rougeL",
            "optimized_mode=max",
            f"paths.output_dir={tmp_path / 'run'}",
        ]
    )
    metrics = train(cfg)
    for stage in ("val", "test"):
        for name in ("bleu", "chrf", "rouge1", "rouge2", "rougeL"):
            value = metrics[f"{stage}/{name}"]
            assert 0 <= value <= 100 and torch.isfinite(torch.tensor(value)), (stage, name, value)
    assert "val/exact_match" not in metrics  # not asked for
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["test/rougeL"] == metrics["test/rougeL"]
