"""``generate``: greedy decoding, sampling and beam search for decoder-only and encoder-decoder models."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from tfgraph.decoding.cpu import onednn_linear
from tfgraph.decoding.logits import sampling_scores
from tfgraph.decoding.search import SeenTokens, beam_search, token_search
from tfgraph.decoding.session import Session

Strategy = Literal["greedy", "sample", "beam"]


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
    fast_cpu_linear: bool = True,
) -> GenerateOutput:
    """Generate tokens from a tfgraph model (``decoder_only``: continue the prompts; ``encoder_decoder``: decode
    from the sources, starting with ``decoder_start_token_id``).

    The model runs in eval mode for the call (its mode is restored after). Batched prompts of a decoder-only model
    are left-padded, with ``attention_mask`` marking the padding; each row then computes what it would alone. A float32
    model on CPU runs its linear layers on oneDNN's multi-threaded kernel (:mod:`tfgraph.decoding.cpu`).

    Args:
        model: a ``decoder_only`` or ``encoder_decoder`` tfgraph model.
        input_ids: [B, T] prompts (decoder-only) or sources (encoder-decoder).
        attention_mask: [B, T] 1 for tokens, 0 for padding (left padding for decoder-only prompts), or ``None``.
        max_new_tokens: the most tokens to generate per row.
        strategy: ``"greedy"`` (the most likely token), ``"sample"`` (draw from the processed distribution) or
            ``"beam"`` (beam search).
        use_cache: keep a KV cache and feed only each new token; ``False`` re-runs the whole sequence every step.
        temperature: sample only: divides the logits (> 0).
        top_k: sample only: keep the k most likely tokens.
        top_p: sample only: keep the nucleus of probability mass ``top_p``.
        min_p: sample only: keep tokens at least ``min_p`` times as likely as the most likely one.
        repetition_penalty: > 0; tokens already in the row (prompt included) have positive logits divided by it and
            negative ones multiplied by it (1 = off).
        num_beams: beam only: beams per input (default 4).
        length_penalty: beam only: a hypothesis scores ``sum log p / length ** length_penalty`` (default 1.0).
        early_stopping: beam only: ``True`` stops an input at ``num_beams`` finished hypotheses; ``False`` (default)
            also when no live beam can still win by the current length (a heuristic); ``"never"`` by the best length
            possible.
        num_return_sequences: sequences per input (beam: the n best, at most ``num_beams``; sample: independent draws).
        eos_token_id: the stop token(s): a row that produces one is finished (the stop token is kept; then ``pad``).
        pad_token_id: what finished rows hold; default the first stop token (or 0).
        decoder_start_token_id: encoder-decoder only: the decoder's first token.
        seed: sample only: seeds a fresh ``torch.Generator`` (reproducible draws).
        generator: sample only: the generator to draw with (instead of ``seed``).
        streamer: greedy and sample: called after each step with the new tokens [B * num_return_sequences].
        output_logits: greedy and sample: also return every step's logits.
        fast_cpu_linear: run a float32 CPU model's ``F.linear`` on oneDNN (:func:`onednn_linear`); ``False`` keeps
            PyTorch's default kernel (the results differ by float rounding only).

    Returns:
        A :class:`GenerateOutput`.
    """
    _check(
        model,
        input_ids,
        attention_mask,
        max_new_tokens=max_new_tokens,
        strategy=strategy,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        num_beams=num_beams,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        num_return_sequences=num_return_sequences,
        seed=seed,
        generator=generator,
        streamer=streamer,
        output_logits=output_logits,
    )
    stop_ids = _stop_ids(eos_token_id, input_ids.device)
    if pad_token_id is None:
        pad_token_id = int(stop_ids[0]) if stop_ids is not None else 0
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None  # no padding: the fast path
    batch = input_ids.shape[0]
    if strategy == "beam":
        num_beams = 4 if num_beams is None else num_beams
        length_penalty = 1.0 if length_penalty is None else length_penalty
        early_stopping = False if early_stopping is None else early_stopping
    expand = num_beams if strategy == "beam" else num_return_sequences
    weight = next(model.parameters(), None)
    on_cpu = fast_cpu_linear and weight is not None and weight.device.type == "cpu" and weight.dtype == torch.float32
    with _eval_mode(model), onednn_linear(on_cpu):
        session = Session(
            model,
            input_ids,
            attention_mask,
            max_new_tokens=max_new_tokens,
            use_cache=use_cache,
            decoder_start_token_id=decoder_start_token_id,
            expand=expand,
        )
        penalty = None
        if repetition_penalty != 1.0:
            if session.encoder_decoder:
                prefix, mask = torch.full((batch * expand, 1), decoder_start_token_id, device=input_ids.device), None
            else:
                prefix = input_ids.repeat_interleave(expand, dim=0)
                mask = None if attention_mask is None else attention_mask.repeat_interleave(expand, dim=0)
            penalty = SeenTokens(prefix, mask, _vocab_size(model), repetition_penalty)

        if strategy == "beam":
            sequences, scores = beam_search(
                session,
                batch_size=batch,
                num_beams=num_beams,
                max_new_tokens=max_new_tokens,
                stop_ids=stop_ids,
                pad_id=pad_token_id,
                length_penalty=length_penalty,
                early_stopping=early_stopping,
                num_return_sequences=num_return_sequences,
                penalty=penalty,
            )
            return GenerateOutput(sequences=sequences, scores=scores)

        if strategy == "greedy":
            pick = _argmax
        else:
            if generator is None:
                generator = torch.Generator(device=input_ids.device)
                if seed is not None:
                    generator.manual_seed(seed)
                else:
                    generator.seed()
            pick = _sampler(generator, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
        sequences, logits = token_search(
            session,
            pick,
            max_new_tokens=max_new_tokens,
            stop_ids=stop_ids,
            pad_id=pad_token_id,
            penalty=penalty,
            streamer=streamer,
            keep_logits=output_logits,
        )
        return GenerateOutput(sequences=sequences, logits=logits)


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


def _vocab_size(model: nn.Module) -> int:
    return int(model.spec.sizes["vocab_size"])


@contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    *,
    max_new_tokens: int,
    **settings: Any,
) -> None:
    """Refuse a model, inputs or settings that cannot work or would be silently ignored, each with the reason."""
    topology = getattr(model, "topology", None)
    if topology not in ("decoder_only", "encoder_decoder"):
        raise ValueError(f"generate needs a decoder_only or encoder_decoder model, got topology {topology!r}")
    check_settings(max_new_tokens=max_new_tokens, **settings)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {list(input_ids.shape)}")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {list(attention_mask.shape)} must match input_ids {list(input_ids.shape)}"
            )
        if topology == "decoder_only" and bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
            raise ValueError("decoder-only prompts must be left-padded: no padding after a row's first token")
    max_len = model.spec.sizes["max_len"]
    needed = max_new_tokens + (input_ids.shape[1] if topology == "decoder_only" else 0)
    if needed > max_len:
        what = "prompt length plus max_new_tokens" if topology == "decoder_only" else "max_new_tokens"
        raise ValueError(f"{what} ({needed}) exceeds the model's max_len ({max_len})")


def check_settings(
    *,
    max_new_tokens: int,
    strategy: str = "greedy",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
    num_beams: int | None = None,
    length_penalty: float | None = None,
    early_stopping: bool | str | None = None,
    num_return_sequences: int = 1,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    streamer: Callable | None = None,
    output_logits: bool = False,
) -> None:
    """Refuse :func:`generate` settings that cannot work or would be silently ignored, before any model runs (the
    arguments and defaults of :func:`generate`; tfgraph-generate checks its config with it before loading the
    checkpoint).

    Raises:
        ValueError: the first setting that cannot work, named in the message, with the reason.
    """
    if strategy not in ("greedy", "sample", "beam"):
        raise ValueError(f"strategy must be 'greedy', 'sample' or 'beam', got {strategy!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be positive, got {repetition_penalty}")
    sampling = {"temperature": temperature != 1.0, "top_k": top_k is not None, "top_p": top_p is not None}
    sampling |= {"min_p": min_p is not None, "seed": seed is not None, "generator": generator is not None}
    if strategy != "sample" and any(sampling.values()):
        given = ", ".join(name for name, set_ in sampling.items() if set_)
        raise ValueError(f"{given} only apply to strategy='sample', not {strategy!r}")
    beam = {"num_beams": num_beams, "length_penalty": length_penalty, "early_stopping": early_stopping}
    if strategy != "beam" and any(value is not None for value in beam.values()):
        given = ", ".join(name for name, value in beam.items() if value is not None)
        raise ValueError(f"{given} only apply to strategy='beam', not {strategy!r}")
    if strategy == "sample":
        if temperature <= 0:
            raise ValueError(
                f"temperature must be positive (for the most likely token use 'greedy'), got {temperature}"
            )
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if min_p is not None and not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {min_p}")
        if seed is not None and generator is not None:
            raise ValueError("give either seed or generator, not both")
    if strategy == "beam":
        beams = 4 if num_beams is None else num_beams
        if beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {beams}")
        if not 1 <= num_return_sequences <= beams:
            raise ValueError(f"num_return_sequences must be between 1 and num_beams={beams}")
        if early_stopping not in (None, True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
        if streamer is not None or output_logits:
            raise ValueError(
                "streamer and output_logits need strategy 'greedy' or 'sample' (beams change until the end)"
            )
    elif num_return_sequences < 1 or (strategy == "greedy" and num_return_sequences != 1):
        raise ValueError("num_return_sequences > 1 needs strategy 'sample' or 'beam' (greedy has one answer)")
