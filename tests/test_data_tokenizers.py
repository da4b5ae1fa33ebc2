"""Tokenizers: fixed special ids, encode/decode, JSON round trip, words to subwords."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfgraph.data import DataError, Tokenizer, build_tokenizer, load_tokenizer
from tfgraph.data.tokenizers import KINDS, SPECIAL_TOKENS

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! Ça va? A naïve café, thrice.",
    "the dog barks at the fox; the fox runs away from the dog",
    "To be, or not to be, that is the question.",
] * 10
SIZES = {"bpe": 300, "wordpiece": 150, "unigram": 120}
LOSSLESS = ("byte", "char", "bpe", "unigram")  # decode(encode(text)) == text for text made of known characters


@pytest.fixture(scope="module", params=KINDS)
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    return build_tokenizer(request.param, TEXTS, vocab_size=SIZES.get(request.param))


def test_special_ids_are_fixed(tokenizer: Tokenizer) -> None:
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.mask_id) == (
        0,
        1,
        2,
        3,
        4,
    )
    assert tokenizer.special_ids == {0, 1, 2, 3, 4}
    assert tokenizer.decode([0, 1, 2, 3, 4], skip_special=False).replace(" ", "") == "".join(SPECIAL_TOKENS)
    assert tokenizer.decode([2, 3, 0]) == ""


def test_encode_decode(tokenizer: Tokenizer) -> None:
    text = "the fox jumps over the dog."
    ids = tokenizer.encode(text)
    assert ids and all(5 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.encode_batch([text, "Hello"]) == [ids, tokenizer.encode("Hello")]
    if tokenizer.kind in LOSSLESS:
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id, tokenizer.pad_id]) == text
    else:  # word and wordpiece give back the words, spaced
        assert tokenizer.decode(ids).replace(" ", "") == text.replace(" ", "")


def test_json_round_trip(tokenizer: Tokenizer, tmp_path: Path) -> None:
    text = "Hello, the naïve fox! zzz"
    again = Tokenizer.from_json(tokenizer.to_json())
    assert type(again) is type(tokenizer) and again.kind == tokenizer.kind
    assert again.vocab_size == tokenizer.vocab_size
    assert again.encode(text) == tokenizer.encode(text)
    tokenizer.save(tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path / "tokenizer.json").encode(text) == tokenizer.encode(text)


def test_encode_words_marks_each_words_ids(tokenizer: Tokenizer) -> None:
    words = ["Hello", "fox", "naïve", "qqq"]
    ids, index = tokenizer.encode_words(words)
    assert len(ids) == len(index)
    assert [i for i in dict.fromkeys(index) if i is not None] == [0, 1, 2, 3]  # every word, in order
    assert all(index[k] is None or index[k] >= (index[k - 1] or 0) for k in range(1, len(index)))
    for w, word in enumerate(words):  # a word's ids are its own encoding (or unk)
        piece = [i for i, at in zip(ids, index, strict=True) if at == w]
        assert tokenizer.decode(piece).strip().replace("##", "") in (word, "")
    assert tokenizer.encode_words([]) == ([], [])


def test_unknown_characters() -> None:
    char = build_tokenizer("char", ["abc"])
    assert char.vocab_size == 8
    assert char.encode("abz") == [5, 6, 1]
    assert char.decode([5, 6, 1]) == "ab"
    assert char.decode([5, 6, 1], skip_special=False) == "ab<unk>"
    byte = build_tokenizer("byte", [])
    assert byte.vocab_size == 261 and byte.decode(byte.encode("é€")) == "é€"


def test_word_tokenizer_vocab_and_unk_in_text() -> None:
    word = build_tokenizer("word", ["a b a <unk> c a", "<unk> b"], vocab_size=7)  # 5 specials + 2 words
    assert word.vocab_size == 7
    assert word.encode("a b c <unk>") == [5, 6, 1, 1]  # c fell out of the vocabulary; <unk> in text is unk
    assert build_tokenizer("word", ["a b a"], min_freq=2).encode("a b") == [5, 1]


def test_char_vocab_size_keeps_the_most_frequent() -> None:
    assert build_tokenizer("char", ["aaab b  c"], vocab_size=7).chars == [" ", "a"]


def test_build_errors() -> None:
    with pytest.raises(DataError, match="unknown tokenizer kind 'bep'.*did you mean 'bpe'"):
        build_tokenizer("bep", TEXTS)
    with pytest.raises(DataError, match="unknown option.*lowercase.*its options: min_freq"):
        build_tokenizer("bpe", TEXTS, lowercase=True)
    with pytest.raises(DataError, match="byte tokenizer has 261 ids"):
        build_tokenizer("byte", TEXTS, vocab_size=300)
    with pytest.raises(DataError, match="must exceed the 5 special tokens"):
        build_tokenizer("char", TEXTS, vocab_size=5)
    with pytest.raises(DataError, match="not a tfgraph tokenizer JSON"):
        Tokenizer.from_json('{"no": "kind"}')
    with pytest.raises(DataError, match="no tokenizer file"):
        load_tokenizer("/nonexistent/tokenizer.json")


def test_wordpiece_lowercase_option() -> None:
    tok = build_tokenizer("wordpiece", TEXTS, vocab_size=150, lowercase=True)
    assert tok.encode("THE FOX") == tok.encode("the fox")
