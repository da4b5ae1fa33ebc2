"""Tokenizers: bytes and characters built in; words, BPE, WordPiece and Unigram trained with `tokenizers`.

Every kind shares five special tokens with fixed ids, first in the vocabulary::

    <pad>=0  <unk>=1  <bos>=2  <eos>=3  <mask>=4

A tokenizer is trained on the training split only, stored with the run and reloaded from it by evaluation and
generation::

    tok = build_tokenizer("bpe", train_texts, vocab_size=8000)
    same = Tokenizer.from_json(tok.to_json())   # the JSON string a checkpoint holds
    tok.save("run/tokenizer.json")              # and a run dir's files: tokenizer.json, tokenizer_info.json
    same = load_tokenizer("run/tokenizer.json")

A run's ``tokenizer.json`` is a file of the `tokenizers` library (``tokenizers.Tokenizer.from_file`` reads it and
encodes text to the same ids: every kind, byte and char too, is written as one of its tokenizers); the tfgraph
kind it is of lies beside it, in ``tokenizer_info.json``. :func:`load_tokenizer` reads both, and also the files
written before (one JSON of tfgraph's own, ``{"kind": ..., ...}``, as :meth:`Tokenizer.to_json`).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from tfgraph.data.errors import DataError, check_choice

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "<mask>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID = range(len(SPECIAL_TOKENS))
KINDS = ("byte", "char", "word", "bpe", "wordpiece", "unigram")
DEFAULT_SUBWORD_VOCAB = 8000


class Tokenizer(ABC):
    """Text <-> ids, with the five special tokens at fixed ids (``pad_id`` ... ``mask_id``)."""

    kind: ClassVar[str]
    pad_id = PAD_ID
    unk_id = UNK_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    mask_id = MASK_ID
    special_ids = frozenset(range(len(SPECIAL_TOKENS)))
    # byte and char tokenizers see the space between two words as a token of its own (see encode_words)
    _space_is_a_token: ClassVar[bool] = False

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """The ids of ``text``, without bos or eos."""

    @abstractmethod
    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """The text of ``ids``; special tokens are dropped, or written as ``<eos>`` etc. when not skipped."""

    @abstractmethod
    def _state(self) -> dict[str, Any]:
        """What besides the kind :meth:`to_json` stores."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` over many texts."""
        return [self.encode(text) for text in texts]

    def encode_words(self, words: Sequence[str]) -> tuple[list[int], list[int | None]]:
        """Ids of a pre-split sentence and, for each id, the index of its word.

        Every word gets at least one id (``<unk>`` when it would get none), so the first id of word ``i`` is
        where a tagger puts word ``i``'s label. For byte and char tokenizers the space between two words is
        an id of its own whose word index is None.

        Returns:
            ``(ids, word_index_per_id)``, two lists of the same length.
        """
        ids: list[int] = []
        index: list[int | None] = []
        for i, word in enumerate(words):
            if i and self._space_is_a_token:
                space = self.encode(" ")
                ids += space
                index += [None] * len(space)
            piece = self.encode(word) or [self.unk_id]
            ids += piece
            index += [i] * len(piece)
        return ids, index

    def to_json(self) -> str:
        """The tokenizer as a JSON string (what a checkpoint stores); :meth:`from_json` reads it back."""
        return json.dumps({"kind": self.kind, **self._state()}, ensure_ascii=False)

    @staticmethod
    def from_json(text: str) -> Tokenizer:
        """The tokenizer that :meth:`to_json` wrote, of whatever kind."""
        try:
            state = json.loads(text)
            kind = state["kind"]
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"not a tfgraph tokenizer JSON ({type(err).__name__}: {err})") from err
        check_choice("tokenizer kind", kind, KINDS)
        return _CLASSES[kind]._from_state(state)

    @classmethod
    @abstractmethod
    def _from_state(cls, state: dict[str, Any]) -> Tokenizer:
        """The tokenizer whose :meth:`to_json` gave ``state``."""

    @abstractmethod
    def to_hf(self) -> Any:
        """The tokenizer as a ``tokenizers.Tokenizer`` giving the same ids for a text, the five special tokens
        included (which it, as every tokenizer of that library, also reads where they are written in a text)."""

    @staticmethod
    def from_hf(kind: str, tokenizer: Any) -> Tokenizer:
        """The tfgraph tokenizer of ``kind`` that :meth:`to_hf` gave ``tokenizer`` for."""
        check_choice("tokenizer kind", kind, KINDS)
        return _CLASSES[kind]._from_hf(kind, tokenizer)

    @classmethod
    @abstractmethod
    def _from_hf(cls, kind: str, tokenizer: Any) -> Tokenizer:
        """The tokenizer whose :meth:`to_hf` gave ``tokenizer``."""

    def save(self, path: str | Path) -> None:
        """Write the tokenizer to ``path`` as a file of the `tokenizers` library (:meth:`to_hf`), and its kind
        beside it (:func:`info_path`); :func:`load_tokenizer` reads them back."""
        path = Path(path)
        path.write_text(self.to_hf().to_str(), encoding="utf-8")
        info_path(path).write_text(json.dumps({"kind": self.kind}) + "\n", encoding="utf-8")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: id ``5 + b`` for byte ``b``; nothing to train, nothing unknown."""

    kind = "byte"
    _space_is_a_token = True
    _offset = len(SPECIAL_TOKENS)

    @property
    def vocab_size(self) -> int:
        return self._offset + 256

    def encode(self, text: str) -> list[int]:
        return [self._offset + b for b in text.encode("utf-8")]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        out, run = [], bytearray()
        for i in map(int, ids):
            if self._offset <= i < self.vocab_size:
                run.append(i - self._offset)
                continue
            if not skip_special:
                out.append(run.decode("utf-8", errors="replace"))
                run = bytearray()
                out.append(SPECIAL_TOKENS[i] if 0 <= i < self._offset else SPECIAL_TOKENS[UNK_ID])
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def _state(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> Tokenizer:
        return cls()

    def to_hf(self) -> Any:
        """A byte-level BPE without merges: byte ``b`` is the library's byte character ``b``, at id ``5 + b``."""
        from tokenizers import Tokenizer as LibTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *byte_characters()])}
        tok = LibTokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(list(SPECIAL_TOKENS))
        return tok

    @classmethod
    def _from_hf(cls, kind: str, tokenizer: Any) -> Tokenizer:
        if tokenizer.get_vocab_size(with_added_tokens=True) != cls._offset + 256:
            raise DataError(f"a byte tokenizer has {cls._offset + 256} ids, this file {tokenizer.get_vocab_size()}")
        return cls()


def byte_characters() -> list[str]:
    """The character that byte-level tokenizers (GPT-2's, the ``ByteLevel`` pre-tokenizer of `tokenizers`) write
    for each byte ``0..255``: printable latin-1 characters stand for themselves, the others for ``chr(256 + n)``."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


class CharTokenizer(Tokenizer):
    """One id per character seen in the training text (in sorted order, after the specials); others are unk.

    Args:
        chars: the vocabulary's characters, in id order.
    """

    kind = "char"
    _space_is_a_token = True

    def __init__(self, *, chars: Sequence[str]) -> None:
        self.chars = list(chars)
        self._ids = {c: i for i, c in enumerate(self.chars, start=len(SPECIAL_TOKENS))}
        if len(self._ids) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise DataError("a char tokenizer's chars must be distinct single characters")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int | None = None) -> CharTokenizer:
        """The characters of ``texts``; with ``vocab_size``, only the most frequent that fit."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text)
        keep = counts.most_common(None if vocab_size is None else max(vocab_size - len(SPECIAL_TOKENS), 0))
        return cls(chars=sorted(c for c, _ in keep))

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.chars)

    def encode(self, text: str) -> list[int]:
        get = self._ids.get
        return [get(c, UNK_ID) for c in text]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        out = []
        offset = len(SPECIAL_TOKENS)
        for i in map(int, ids):
            if offset <= i < self.vocab_size:
                out.append(self.chars[i - offset])
            elif not skip_special:
                out.append(SPECIAL_TOKENS[i] if 0 <= i < offset else SPECIAL_TOKENS[UNK_ID])
        return "".join(out)

    def _state(self) -> dict[str, Any]:
        return {"chars": self.chars}

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> Tokenizer:
        return cls(chars=state["chars"])

    def to_hf(self) -> Any:
        """A word-level tokenizer whose words are single characters, joined again when decoded."""
        from tokenizers import Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as LibTokenizer

        vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *self.chars])}
        tok = LibTokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS[UNK_ID]))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
        tok.decoder = decoders.Fuse()
        tok.add_special_tokens(list(SPECIAL_TOKENS))
        return tok

    @classmethod
    def _from_hf(cls, kind: str, tokenizer: Any) -> Tokenizer:
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        return cls(chars=[tokenizer.id_to_token(i) for i in range(len(SPECIAL_TOKENS), size)])


class HFTokenizer(Tokenizer):
    """A tokenizer of the `tokenizers` library (word level, BPE, WordPiece or Unigram) behind our interface.

    Args:
        kind: ``word``, ``bpe``, ``wordpiece`` or ``unigram``.
        tokenizer: the library's tokenizer, its first five ids our special tokens.
    """

    def __init__(self, *, kind: str, tokenizer: Any) -> None:
        self.kind = kind  # type: ignore[misc]  # one class serves four kinds
        self.hf = tokenizer
        for i, token in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(token) != i:
                raise DataError(f"{kind} tokenizer: special token {token} must have id {i}")

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)  # fast: no offsets (tokenizers 0.21+)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def encode_words(self, words: Sequence[str]) -> tuple[list[int], list[int | None]]:
        if not words:
            return [], []
        # byte-level BPE marks a word start by its leading space, as in running text
        pieces = [w if i == 0 or self.kind != "bpe" else " " + w for i, w in enumerate(words)]
        encoding = self.hf.encode(pieces, is_pretokenized=True, add_special_tokens=False)
        per_word: list[list[int]] = [[] for _ in words]
        for token_id, word in zip(encoding.ids, encoding.word_ids, strict=True):
            per_word[word].append(token_id)
        ids: list[int] = []
        index: list[int | None] = []
        for i, piece in enumerate(per_word):
            piece = piece or [self.unk_id]
            ids += piece
            index += [i] * len(piece)
        return ids, index

    def _state(self) -> dict[str, Any]:
        return {"tokenizer": json.loads(self.hf.to_str())}

    def to_hf(self) -> Any:
        return self.hf

    @classmethod
    def _from_hf(cls, kind: str, tokenizer: Any) -> Tokenizer:
        return cls(kind=kind, tokenizer=tokenizer)

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> Tokenizer:
        from tokenizers import Tokenizer as LibTokenizer

        return cls(kind=state["kind"], tokenizer=LibTokenizer.from_str(json.dumps(state["tokenizer"])))


def _hf_tokenizer(kind: str, texts: Iterable[str], vocab_size: int | None, **opts: Any) -> HFTokenizer:
    """Train one of the `tokenizers` library's models on ``texts``."""
    from tokenizers import Tokenizer as LibTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    specials = list(SPECIAL_TOKENS)
    min_freq = int(opts.pop("min_freq", 1 if kind == "word" else 2))
    if kind == "word":  # the vocabulary counted here: the library's trainer misplaces <unk> when texts hold it
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text.split())
        ranked = sorted(
            (w for w, n in counts.items() if n >= min_freq and w not in specials), key=lambda w: (-counts[w], w)
        )
        words = ranked[: None if vocab_size is None else max(vocab_size - len(specials), 0)]
        tok = LibTokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.add_special_tokens(specials)
        return HFTokenizer(kind=kind, tokenizer=tok)
    if kind == "bpe":  # byte-level, as GPT-2: nothing is ever unknown and decoding gives the text back
        tok = LibTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size or DEFAULT_SUBWORD_VOCAB,
            min_frequency=min_freq,
            special_tokens=specials,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    elif kind == "wordpiece":  # as BERT: split on whitespace and punctuation, ## marks a word's later pieces
        tok = LibTokenizer(models.WordPiece(unk_token="<unk>"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=bool(opts.pop("lowercase", False)))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size or DEFAULT_SUBWORD_VOCAB,
            min_frequency=min_freq,
            special_tokens=specials,
            show_progress=False,
        )
    else:  # unigram, as SentencePiece: spaces become "▁" and belong to the following piece
        tok = LibTokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size or DEFAULT_SUBWORD_VOCAB,
            special_tokens=specials,
            show_progress=False,
            unk_token="<unk>",
            max_piece_length=int(opts.pop("max_piece_length", 16)),
        )
    tok.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(kind=kind, tokenizer=tok)


OPTIONS: dict[str, tuple[str, ...]] = {  # the options each kind takes (tokenizer_opts)
    "byte": (),
    "char": (),
    "word": ("min_freq",),
    "bpe": ("min_freq",),
    "wordpiece": ("min_freq", "lowercase"),
    "unigram": ("max_piece_length",),
}


def build_tokenizer(kind: str, texts: Iterable[str], vocab_size: int | None = None, **opts: Any) -> Tokenizer:
    """Train a tokenizer of ``kind`` on ``texts`` (the training split only).

    Args:
        kind: ``byte``, ``char``, ``word``, ``bpe``, ``wordpiece`` or ``unigram``.
        texts: the training texts.
        vocab_size: the vocabulary size, special tokens included. None: every character (char) or word
            (word) seen, 8000 for the subword kinds; ``byte`` is always 261.
        **opts: ``min_freq`` (word, bpe, wordpiece: rarer words or merges are left out; default 1 for words,
            2 otherwise), ``lowercase`` (wordpiece, default false), ``max_piece_length`` (unigram, default 16).
    """
    check_choice("tokenizer kind", kind, KINDS)
    unknown = sorted(set(opts) - set(OPTIONS[kind]))
    if unknown:
        allowed = ", ".join(OPTIONS[kind]) or "none"
        raise DataError(f"{kind} tokenizer: unknown option(s) {', '.join(unknown)}; its options: {allowed}")
    if vocab_size is not None and vocab_size <= len(SPECIAL_TOKENS):
        raise DataError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    if kind == "byte":
        tok: Tokenizer = ByteTokenizer()
        if vocab_size not in (None, tok.vocab_size):
            raise DataError(f"a byte tokenizer has {tok.vocab_size} ids; vocab_size={vocab_size} cannot apply")
        return tok
    if kind == "char":
        return CharTokenizer.train(texts, vocab_size)
    return _hf_tokenizer(kind, texts, vocab_size, **opts)


def info_path(path: str | Path) -> Path:
    """Where the kind of the tokenizer saved at ``path`` lies: ``tokenizer_info.json`` beside ``tokenizer.json``
    (``<stem>_info.json`` for another name)."""
    path = Path(path)
    return path.with_name(f"{path.stem}_info.json")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer saved at ``path`` (a run's ``tokenizer.json``) by :meth:`Tokenizer.save`, its kind read from
    :func:`info_path`; or one saved before as tfgraph's own JSON (:meth:`Tokenizer.to_json`).

    Raises:
        DataError: no file there, no ``tokenizer_info.json`` beside a `tokenizers` file, or a file that is neither.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no tokenizer file there (a run saves it as tokenizer.json)")
    text = path.read_text(encoding="utf-8")
    try:
        state = json.loads(text)
    except ValueError as err:
        raise DataError(f"{path}: not a tokenizer JSON ({err})") from err
    if isinstance(state, dict) and "kind" in state:  # tfgraph's own JSON (a file saved before tokenizer_info.json)
        try:
            return Tokenizer.from_json(text)
        except DataError as err:
            raise DataError(f"{path}: {err}") from err
    return _load_hf(path, text)


def _load_hf(path: Path, text: str) -> Tokenizer:
    """The tokenizer of a `tokenizers` file at ``path`` (holding ``text``), of the kind its info file names."""
    from tokenizers import Tokenizer as LibTokenizer

    info = info_path(path)
    if not info.is_file():
        raise DataError(f"{path}: no {info.name} beside it to say which tfgraph tokenizer kind it is")
    try:
        kind = json.loads(info.read_text(encoding="utf-8"))["kind"]
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(
            f'{info}: expected {{"kind": <one of {", ".join(KINDS)}>}} ({type(err).__name__}: {err})'
        ) from err
    try:
        tokenizer = LibTokenizer.from_str(text)
    except Exception as err:  # the library's own error type
        raise DataError(f"{path}: not a tokenizers-library file ({err})") from err
    try:
        return Tokenizer.from_hf(kind, tokenizer)
    except DataError as err:
        raise DataError(f"{path}: {err}") from err


_CLASSES: dict[str, type[Tokenizer]] = {
    "byte": ByteTokenizer,
    "char": CharTokenizer,
    **{kind: HFTokenizer for kind in ("word", "bpe", "wordpiece", "unigram")},
}
