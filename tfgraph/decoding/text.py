"""Text in, text out: prompts encoded with a tokenizer, generated, decoded, optionally streamed as they come.

    completions = generate_text(model, tokenizer, ["time flies"], max_new_tokens=32, strategy="beam",
                                num_return_sequences=2)
    completions[0][0].text, completions[0][0].score

Three ways a prompt meets a model: a ``decoder_only`` language model continues it; a ``decoder_only`` prefix LM
(``prefix_lm=True``, a seq2seq task on a decoder) reads it as a source followed by ``<eos>``; an ``encoder_decoder``
reads it as its source and decodes from ``<bos>``. Generation stops at ``<eos>``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor, nn

from tfgraph.decoding.api import stop_tokens
from tfgraph.decoding.options import DecodingOptions
from tfgraph.decoding.session import pad_prompts
from tfgraph.decoding.window import generate_windowed


class TextTokenizer(Protocol):
    """What text generation needs of a tokenizer (:class:`tfgraph.data.Tokenizer` has it)."""

    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str: ...


@dataclass
class Completion:
    """One generated sequence.

    Attributes:
        text: the new text (for a language model, the continuation without the prompt).
        tokens: the new token ids, up to and including the stop token.
        score: beam search: the sequence's length-normalised log-probability (see
            :func:`tfgraph.decoding.generate`); otherwise ``None``.
    """

    text: str
    tokens: list[int]
    score: float | None = None


class TextStreamer:
    """A ``streamer`` for :func:`tfgraph.decoding.generate` (one row) that hands on the new text as it grows.

    Each step's token is appended and the whole sequence decoded again, so that pieces that only make sense together
    (the bytes of one UTF-8 character, subwords that join) come out right: text ending in an incomplete character
    (U+FFFD) waits for the next token, and :meth:`end` writes whatever is left.

    Args:
        tokenizer: the model's tokenizer.
        write: called with each new piece of text.
        prefix: ids the generated ones follow (a language model's prompt), so that the first new token decodes as
            it does after them (a subword, a leading space); their own text is not written.
    """

    def __init__(self, tokenizer: TextTokenizer, write: Callable[[str], None], prefix: Sequence[int] = ()) -> None:
        self.tokenizer, self.write = tokenizer, write
        self.ids = list(prefix)
        self.shown = tokenizer.decode(self.ids)

    def __call__(self, tokens: Tensor) -> None:
        if tokens.numel() != 1:
            raise ValueError(f"TextStreamer streams one sequence, got {tokens.numel()} tokens in a step")
        self.ids.append(int(tokens.reshape(-1)[0]))
        text = self.tokenizer.decode(self.ids)
        if not text.endswith("\ufffd"):
            self._show(text)

    def end(self) -> None:
        """Write the rest (text held back as an incomplete character that never completed)."""
        self._show(self.tokenizer.decode(self.ids))

    def _show(self, text: str) -> None:
        if text.startswith(self.shown) and len(text) > len(self.shown):
            self.write(text[len(self.shown) :])
            self.shown = text


def generate_text(
    model: nn.Module,
    tokenizer: TextTokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    prefix_lm: bool = False,
    context: int | None = None,
    stream: Callable[[str], None] | None = None,
    **options: Any,
) -> list[list[Completion]]:
    """Generate from text prompts and decode the results.

    Args:
        model: a ``decoder_only`` or ``encoder_decoder`` tfgraph model.
        tokenizer: its tokenizer.
        prompts: the prompts (a language model continues them; an empty one starts from ``<bos>``) or sources.
        max_new_tokens: the most tokens to generate per sequence.
        prefix_lm: a ``decoder_only`` model trained as a prefix LM (``source <eos> target``): a prompt is a source.
        context: the most tokens a language model's sequence holds (see
            :func:`~tfgraph.decoding.window.generate_windowed`; one prompt may go on past it).
        stream: called with each new piece of text as it is generated (one prompt, ``greedy`` or ``sample``, one
            sequence).
        **options: the other arguments of :func:`tfgraph.decoding.generate` (``strategy``, ``use_cache``,
            ``temperature``, ``num_beams``, ``num_return_sequences``, ``seed``, ...). Stop and padding tokens and the
            decoder's start token default to the tokenizer's ``<eos>``, ``<pad>`` and ``<bos>``.

    Returns:
        For each prompt, its ``num_return_sequences`` completions (beam search: best first).
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    encoder_decoder = getattr(model, "topology", None) == "encoder_decoder"
    options = {**token_defaults(model, tokenizer), **options}
    if encoder_decoder:
        prefixes = [tokenizer.encode(p) for p in prompts]
        if not all(prefixes):
            raise ValueError(f"an encoder-decoder needs a source to translate; prompt {prefixes.index([])} is empty")
    elif prefix_lm:
        prefixes = [tokenizer.encode(p) + [tokenizer.eos_id] for p in prompts]
    else:
        prefixes = [tokenizer.encode(p) or [tokenizer.bos_id] for p in prompts]
    continues = not encoder_decoder and not prefix_lm  # the new text follows the prompt's
    input_ids, attention_mask = pad_prompts(prefixes, tokenizer.pad_id, left=not encoder_decoder)
    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)

    streamer = None
    if stream is not None:
        chosen = DecodingOptions(max_new_tokens=max_new_tokens, **options)
        if len(prompts) != 1 or chosen.strategy == "beam" or chosen.num_return_sequences > 1:
            raise ValueError("streaming needs one prompt, strategy 'greedy' or 'sample' and one sequence")
        streamer = TextStreamer(tokenizer, stream, prefixes[0] if continues else ())
    out = generate_windowed(
        model, input_ids, attention_mask, max_new_tokens=max_new_tokens, context=context, streamer=streamer, **options
    )
    if streamer is not None:
        streamer.end()

    stop_ids = stop_tokens(options["eos_token_id"])
    per_prompt = out.sequences.shape[0] // len(prompts)
    completions: list[list[Completion]] = []
    for i, prefix in enumerate(prefixes):
        rows = []
        for j in range(i * per_prompt, (i + 1) * per_prompt):
            tokens = _until_stop(out.sequences[j].tolist(), stop_ids)
            score = None if out.scores is None else float(out.scores[j])
            rows.append(Completion(_new_text(tokenizer, prefix if continues else [], tokens), tokens, score))
        completions.append(rows)
    return completions


def token_defaults(model: nn.Module, tokenizer: TextTokenizer) -> dict[str, int]:
    """Stop, padding and (encoder-decoder) start tokens from the tokenizer: ``generate``'s defaults for its model."""
    defaults = {"eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    if getattr(model, "topology", None) == "encoder_decoder":
        defaults["decoder_start_token_id"] = tokenizer.bos_id
    return defaults


def _until_stop(tokens: list[int], stop_ids: list[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[: i + 1]
    return tokens


def _new_text(tokenizer: TextTokenizer, prefix: Sequence[int], tokens: Sequence[int]) -> str:
    """The text ``tokens`` add after ``prefix`` (decoded together, so that a subword joins what precedes it)."""
    before = tokenizer.decode(prefix)
    text = tokenizer.decode([*prefix, *tokens])
    return text[len(before) :] if text.startswith(before) else tokenizer.decode(tokens)
