"""The decoding loops: one token per row per step (greedy or sampled), and beam search.

Both drive a :class:`~tfgraph.decoding.session.Session` and stop at ``max_new_tokens`` or when every row (every
beam search input) is done. A row that produced a stop token is finished: later steps give it ``pad``. Beam search
keeps each input's best finished sequences in :class:`Hypotheses`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tfgraph.decoding.logits import repetition_penalty
from tfgraph.decoding.session import Session

Pick = Callable[[Tensor], Tensor]  # processed scores [B, V] -> chosen tokens [B]


class SeenTokens:
    """Which tokens occur in each row so far, for the repetition penalty: a [B, V] boolean table.

    Args:
        prefix: [B, T] the tokens fed before the first step (prompt, or decoder start token).
        mask: [B, T] 1 for real tokens (padding is not "seen"), or ``None``.
        vocab_size: V.
        penalty: the repetition penalty (> 0; 1 = none).
    """

    def __init__(self, prefix: Tensor, mask: Tensor | None, vocab_size: int, penalty: float) -> None:
        self.penalty = penalty
        real = torch.ones_like(prefix) if mask is None else mask.long()
        counts = torch.zeros(prefix.shape[0], vocab_size, dtype=torch.long, device=prefix.device)
        self.seen = counts.scatter_add_(1, prefix, real) > 0

    def add(self, tokens: Tensor) -> None:
        """Mark ``tokens`` [B] as seen."""
        self.seen[torch.arange(tokens.shape[0], device=tokens.device), tokens] = True

    def __call__(self, scores: Tensor) -> Tensor:
        return repetition_penalty(scores, self.seen, self.penalty)

    def reorder(self, index: Tensor) -> None:
        self.seen = self.seen[index]


def token_search(
    session: Session,
    pick: Pick,
    *,
    max_new_tokens: int,
    stop_ids: Tensor | None,
    pad_id: int,
    penalty: SeenTokens | None = None,
    streamer: Callable[[Tensor], None] | None = None,
    keep_logits: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Generate one token per row per step with ``pick`` (argmax for greedy, a draw for sampling).

    Returns:
        The new tokens [B, N] (``N <= max_new_tokens``; ``pad`` after a row's stop token), and with ``keep_logits``
        the model's logits of every step [B, N, V] (before any processing).
    """
    logits = session.first()
    batch = logits.shape[0]
    out = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=logits.device)
    kept = [] if keep_logits else None
    finished = torch.zeros(batch, dtype=torch.bool, device=logits.device)
    for step in range(max_new_tokens):
        if kept is not None:
            kept.append(logits)
        scores = logits.float()
        if penalty is not None:
            scores = penalty(scores)
        tokens = pick(scores)
        if stop_ids is not None:
            tokens = tokens.masked_fill(finished, pad_id)
            finished = finished | torch.isin(tokens, stop_ids)
        out[:, step] = tokens
        if streamer is not None:
            streamer(tokens)
        if step + 1 == max_new_tokens or (stop_ids is not None and bool(finished.all())):
            break
        if penalty is not None:
            penalty.add(tokens)
        logits = session.step(tokens)
    out = out[:, : step + 1]
    return out, (torch.stack(kept, dim=1) if kept is not None else None)


def beam_search(
    session: Session,
    *,
    batch_size: int,
    num_beams: int,
    max_new_tokens: int,
    stop_ids: Tensor | None,
    pad_id: int,
    length_penalty: float = 1.0,
    early_stopping: bool | Literal["never"] = False,
    num_return_sequences: int = 1,
    penalty: SeenTokens | None = None,
) -> tuple[Tensor, Tensor]:
    """Beam search over a session of ``batch_size * num_beams`` rows (each input's beams adjacent), as Hugging Face's.

    Every step extends each live beam by every token; of the ``K = max(2, 1 + n_stop) * num_beams`` best
    continuations per input, those ending in a stop token (or reaching ``max_new_tokens``) and ranking among the
    first ``num_beams`` become finished hypotheses scored ``sum of log-probabilities / length ** length_penalty``
    (length = generated tokens, the stop token included); the best ``num_beams`` others live on. An input is done
    when ``early_stopping`` is True and it has ``num_beams`` hypotheses; with False, also when no live beam can still
    beat its worst hypothesis judging by the current length (Hugging Face's heuristic); with ``"never"``, judging by
    the best length still possible.

    Returns:
        The ``num_return_sequences`` best hypotheses per input, best first: tokens [batch_size * n, N] (``pad``
        after the end) and their scores [batch_size * n].
    """
    B, nb, L = batch_size, num_beams, max_new_tokens
    logits = session.first()
    device = logits.device
    n_stop = 0 if stop_ids is None else stop_ids.numel()
    K = max(2, 1 + n_stop) * nb
    top_nb = torch.arange(K, device=device) < nb
    offsets = torch.arange(B, device=device)[:, None] * nb  # row of each input's first beam
    running = torch.full((B, nb, L), pad_id, dtype=torch.long, device=device)
    running_scores = torch.zeros(B, nb, device=device)
    running_scores[:, 1:] = -1e9  # the beams start identical: continue only the first at step 0
    finished = Hypotheses(B, nb, L, pad_id, device)
    improvable = torch.ones(B, dtype=torch.bool, device=device)

    for step in range(L):
        log_probs = F.log_softmax(logits.float(), dim=-1)  # [B * nb, V]
        if penalty is not None:
            log_probs = penalty(log_probs)
        V = log_probs.shape[-1]
        totals = (log_probs.view(B, nb, V) + running_scores[:, :, None]).view(B, nb * V)
        cand_scores, cand = totals.topk(K, dim=1)  # [B, K], best first
        cand_beam, cand_token = cand // V, cand % V
        cand_seqs = running.gather(1, cand_beam[:, :, None].expand(B, K, L)).clone()
        cand_seqs[:, :, step] = cand_token
        last = step + 1 == L
        hits = torch.ones_like(cand_token, dtype=torch.bool) if last else _is_stop(cand_token, stop_ids)

        # the best num_beams continuations that did not stop live on
        alive = cand_scores.masked_fill(hits, -1e9) if not last else cand_scores
        keep = alive.topk(nb, dim=1).indices
        running = cand_seqs.gather(1, keep[:, :, None].expand(B, nb, L))
        running_scores = alive.gather(1, keep)
        source_beam = cand_beam.gather(1, keep)

        # stopped continuations among the first num_beams become hypotheses, if the input still takes any
        full = finished.filled.all(1) if early_stopping is True else torch.zeros_like(improvable)
        new = hits & top_nb & (improvable & ~full)[:, None]
        finished.add(cand_seqs, new, cand_scores / (step + 1) ** length_penalty, length=step + 1)

        if last:
            break
        best_length = L if early_stopping == "never" and length_penalty > 0 else step + 1
        improvable = improvable & finished.beatable(running_scores[:, 0] / best_length**length_penalty)
        if not bool(improvable.any()) or (early_stopping is True and bool(finished.filled.all())) or bool(hits.all()):
            break
        index = (source_beam + offsets).view(-1)
        session.reorder(index)
        if penalty is not None:
            penalty.reorder(index)
            penalty.add(running[:, :, step].view(-1))
        logits = session.step(running[:, :, step].view(-1))
    return finished.best(num_return_sequences)


class Hypotheses:
    """The best ``num_beams`` finished hypotheses of each input of a beam search so far, best first.

    Attributes:
        tokens: [B, num_beams, L] their tokens (``pad`` after the end, and in empty slots).
        scores: [B, num_beams] their length-normalised scores (-1e9 in empty slots).
        length: [B, num_beams] their lengths.
        filled: [B, num_beams] which slots hold a hypothesis.
    """

    def __init__(self, batch_size: int, num_beams: int, max_new_tokens: int, pad_id: int, device: torch.device) -> None:
        B, nb, L = batch_size, num_beams, max_new_tokens
        self.tokens = torch.full((B, nb, L), pad_id, dtype=torch.long, device=device)
        self.scores = torch.full((B, nb), -1e9, device=device)
        self.length = torch.zeros(B, nb, dtype=torch.long, device=device)
        self.filled = torch.zeros(B, nb, dtype=torch.bool, device=device)

    def add(self, candidates: Tensor, new: Tensor, scores: Tensor, *, length: int) -> None:
        """Take the ``candidates`` [B, K, L] where ``new`` [B, K] is set, scored ``scores`` [B, K], each ``length``
        tokens long, keeping the best ``num_beams`` of each input."""
        B, nb, L = self.tokens.shape
        merged = torch.cat((self.scores, scores.masked_fill(~new, -1e9)), dim=1)
        best = merged.topk(nb, dim=1).indices
        self.tokens = torch.cat((self.tokens, candidates), dim=1).gather(1, best[:, :, None].expand(B, nb, L))
        self.scores = merged.gather(1, best)
        lengths = torch.full_like(new, length, dtype=torch.long)
        self.length = torch.cat((self.length, lengths), dim=1).gather(1, best)
        self.filled = torch.cat((self.filled, new), dim=1).gather(1, best)

    def beatable(self, best_running: Tensor) -> Tensor:
        """[B] whether an input still takes a better hypothesis: a free slot, or ``best_running`` [B] (the best
        score a live beam can still reach) above its worst."""
        return ~self.filled.all(1) | (best_running > self.scores.min(1).values)

    def best(self, n: int) -> tuple[Tensor, Tensor]:
        """The ``n`` best per input: tokens [B * n, N] (``N`` the longest of them) and scores [B * n]."""
        B = self.tokens.shape[0]
        longest = int(self.length[:, :n].max())
        return self.tokens[:, :n, :longest].reshape(B * n, longest), self.scores[:, :n].reshape(B * n)


def _is_stop(tokens: Tensor, stop_ids: Tensor | None) -> Tensor:
    if stop_ids is None:
        return torch.zeros_like(tokens, dtype=torch.bool)
    return torch.isin(tokens, stop_ids)
