"""``generate``: greedy decoding, sampling and beam search for decoder-only and encoder-decoder models.

Its keywords are the table of :mod:`tfgraph.decoding.options`, checked there once per call; what runs each step is
in :mod:`tfgraph.decoding.search`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from tfgraph.decoding.cpu import choose_linear, linear_kernel, observe
from tfgraph.decoding.logits import sampling_scores
from tfgraph.decoding.options import CpuLinear, DecodingOptions, Strategy, check_settings, options_doc
from tfgraph.decoding.search import SeenTokens, beam_search, token_search
from tfgraph.decoding.session import Session

__all__ = ["GenerateOutput", "Strategy", "check_settings", "generate", "random_generator", "stop_tokens"]


@dataclass
class GenerateOutput:
    """What :func:`generate` returns.

    Attributes:
        sequences: [B * num_return_sequences, N] the generated tokens, without the prompt; after a stop token a row
            holds ``pad_token_id``. The rows of one input are adjacent.
        scores: beam search only: [B * num_return_sequences] each sequence's sum of token log-probabilities divided
            by ``length ** length_penalty``; otherwise ``None``.
        logits: with ``output_logits`` (greedy and sample only): [B * num_return_sequences, N, vocab] the model's
            next-token logits at each step, before any processing.
    """

    sequences: Tensor
    scores: Tensor | None = None
    logits: Tensor | None = None


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    max_new_tokens: int,
    strategy: Strategy = "greedy",
    use_cache: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    num_beams: int | None = None,
    length_penalty: float | None = None,
    early_stopping: bool | Literal["never"] | None = None,
    num_return_sequences: int = 1,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    decoder_start_token_id: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    streamer: Callable[[Tensor], None] | None = None,
    output_logits: bool = False,
    cpu_linear: CpuLinear = "auto",
    compile: bool = False,
) -> GenerateOutput:
    """Generate tokens from a tfgraph model (``decoder_only``: continue the prompts; ``encoder_decoder``: decode
    from the sources, starting with ``decoder_start_token_id``).

    The model runs in eval mode for the call (its mode is restored after). Batched prompts of a decoder-only model
    are left-padded, with ``attention_mask`` marking the padding; each row then computes what it would alone. A float32
    model on CPU runs its linear layers on the faster of PyTorch's and oneDNN's kernel, timed on this machine the first
    time a model of its shapes generates, and again when a generation's steps drift far from that timing (the load on
    the machine changed; :mod:`tfgraph.decoding.cpu`).

    Args:
        model: a ``decoder_only`` or ``encoder_decoder`` tfgraph model.
        input_ids: [B, T] prompts (decoder-only) or sources (encoder-decoder).
        attention_mask: [B, T] 1 for tokens, 0 for padding (left padding for decoder-only prompts), or ``None``.
        {options}

    The keywords are the fields of :class:`~tfgraph.decoding.options.DecodingOptions`, whose table gives their
    descriptions here, the strategies each applies to and the checks.

    Returns:
        A :class:`GenerateOutput`.
    """
    options = DecodingOptions.pick(locals())  # the keywords, a field each
    _check(model, input_ids, attention_mask, options)
    options = options.resolved()
    stop_ids = _stop_ids(options.eos_token_id, input_ids.device)
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: the fast path
    rows = input_ids.shape[0] * options.rows_per_input
    with _eval_mode(model):
        choice = choose_linear(model, rows=rows, wanted=options.cpu_linear, use_cache=options.use_cache)
        with linear_kernel(choice.kernel):
            session = Session(
                model,
                input_ids,
                attention_mask,
                max_new_tokens=max_new_tokens,
                use_cache=options.use_cache,
                decoder_start_token_id=options.decoder_start_token_id,
                expand=options.rows_per_input,
                compile=options.compile,
            )
            penalty = _seen_tokens(model, session, input_ids, attention_mask, options)
            out = _search(session, options, batch_size=input_ids.shape[0], stop_ids=stop_ids, penalty=penalty)
    if not options.compile:  # steps far slower or faster than timed: the load changed, time the kernels again
        observe(choice, steps=session.steps, seconds=session.step_seconds)
    return out


if generate.__doc__:  # (python -OO drops docstrings)
    generate.__doc__ = generate.__doc__.replace("{options}", options_doc(indent=" " * 8))


def _search(
    session: Session, options: DecodingOptions, *, batch_size: int, stop_ids: Tensor | None, penalty: SeenTokens | None
) -> GenerateOutput:
    """Run the strategy's loop over ``session``: beam search, or a token per row per step (greedy or sampled)."""
    pad_id = options.pad_token_id
    if pad_id is None:
        pad_id = int(stop_ids[0]) if stop_ids is not None else 0
    if options.strategy == "beam":
        sequences, scores = beam_search(
            session,
            batch_size=batch_size,
            num_beams=options.num_beams,
            max_new_tokens=options.max_new_tokens,
            stop_ids=stop_ids,
            pad_id=pad_id,
            length_penalty=options.length_penalty,
            early_stopping=options.early_stopping,
            num_return_sequences=options.num_return_sequences,
            penalty=penalty,
        )
        return GenerateOutput(sequences=sequences, scores=scores)
    sequences, logits = token_search(
        session,
        _picker(options, session.device),
        max_new_tokens=options.max_new_tokens,
        stop_ids=stop_ids,
        pad_id=pad_id,
        penalty=penalty,
        streamer=options.streamer,
        keep_logits=options.output_logits,
    )
    return GenerateOutput(sequences=sequences, logits=logits)


def _seen_tokens(
    model: nn.Module, session: Session, input_ids: Tensor, attention_mask: Tensor | None, options: DecodingOptions
) -> SeenTokens | None:
    """The repetition penalty's table of the tokens each row has seen (its prompt, or the decoder's start token);
    ``None`` without a penalty."""
    if options.repetition_penalty == 1.0:
        return None
    expand = options.rows_per_input
    if session.encoder_decoder:
        start = options.decoder_start_token_id
        prefix, mask = torch.full((input_ids.shape[0] * expand, 1), start, device=input_ids.device), None
    else:
        prefix = input_ids.repeat_interleave(expand, dim=0)
        mask = None if attention_mask is None else attention_mask.repeat_interleave(expand, dim=0)
    return SeenTokens(prefix, mask, model.vocab_size, options.repetition_penalty)


def _picker(options: DecodingOptions, device: torch.device) -> Callable[[Tensor], Tensor]:
    """How greedy decoding (argmax) or sampling (a draw from the processed scores) picks each step's tokens."""
    if options.strategy == "greedy":
        return _argmax
    settings = dict(temperature=options.temperature, top_k=options.top_k, top_p=options.top_p, min_p=options.min_p)
    return _sampler(random_generator(options.seed, options.generator, device), **settings)


def random_generator(seed: int | None, generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """``generator``, or a fresh one on ``device`` seeded with ``seed`` (without one, from the system's entropy)."""
    if generator is not None:
        return generator
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _argmax(scores: Tensor) -> Tensor:
    return scores.argmax(dim=-1)


def _sampler(generator: torch.Generator, **settings: float | int | None) -> Callable[[Tensor], Tensor]:
    def pick(scores: Tensor) -> Tensor:
        probs = sampling_scores(scores, **settings).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    return pick


def stop_tokens(eos_token_id: int | Sequence[int] | None) -> list[int]:
    """The stop tokens an ``eos_token_id`` argument names, in its order."""
    if eos_token_id is None:
        return []
    return [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)


def _stop_ids(eos_token_id: int | Sequence[int] | None, device: torch.device) -> Tensor | None:
    ids = stop_tokens(eos_token_id)
    return torch.tensor(ids, dtype=torch.long, device=device) if ids else None


@contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, options: DecodingOptions) -> None:
    """Refuse a model, inputs or settings that cannot work or would be silently ignored, each with the reason."""
    topology = getattr(model, "topology", None)
    if topology not in ("decoder_only", "encoder_decoder"):
        raise ValueError(f"generate needs a decoder_only or encoder_decoder model, got topology {topology!r}")
    options.check()
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {list(input_ids.shape)}")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {list(attention_mask.shape)} must match input_ids {list(input_ids.shape)}"
            )
        if topology == "decoder_only" and bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
            raise ValueError("decoder-only prompts must be left-padded: no padding after a row's first token")
    needed = options.max_new_tokens + (input_ids.shape[1] if topology == "decoder_only" else 0)
    if needed > model.max_len:
        what = "prompt length plus max_new_tokens" if topology == "decoder_only" else "max_new_tokens"
        raise ValueError(f"{what} ({needed}) exceeds the model's max_len ({model.max_len})")
