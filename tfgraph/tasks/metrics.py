"""Metrics torchmetrics has no equal for, as torchmetrics ``Metric`` s so they sync across processes.

- :class:`EntityF1`: entity-level precision, recall and F1 with exact span match, as conlleval (spans found
  by seqeval's ``get_entities``).
- :class:`CorpusScore`: sacrebleu's corpus BLEU or chrF, from summed sufficient statistics (so a corpus split
  over batches and processes scores exactly as ``sacrebleu.corpus_bleu`` on the whole).
- :class:`Rouge`: torchmetrics' ``ROUGEScore``, its F-measures on the 0-100 scale of BLEU and chrF.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from sacrebleu.metrics import BLEU, CHRF
from seqeval.metrics.sequence_labeling import get_entities
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.text.rouge import ROUGEScore

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class EntityF1(Metric):
    """Micro-averaged entity precision, recall and F1 over BIO (or IOB1/IOE) tag sequences.

    An entity counts as correct only when its type, start and end all match (conlleval's rule).
    ``update(preds, target)`` takes lists of tag sequences; ``compute()`` returns
    ``{"precision", "recall", "f1"}``.
    """

    full_state_update = False
    keys = ("precision", "recall", "f1")  # what compute() returns, each logged as <stage>/<key>

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("predicted", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("actual", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[Sequence[str]], target: Sequence[Sequence[str]]) -> None:
        for pred_tags, true_tags in zip(preds, target, strict=True):
            pred = set(get_entities(list(pred_tags)))
            true = set(get_entities(list(true_tags)))
            self.correct += len(pred & true)
            self.predicted += len(pred)
            self.actual += len(true)

    def compute(self) -> dict[str, Tensor]:
        precision = self.correct / self.predicted.clamp(min=1)
        recall = self.correct / self.actual.clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        return {"precision": precision.float(), "recall": recall.float(), "f1": f1.float()}


class CorpusScore(Metric):
    """sacrebleu's corpus BLEU or chrF (default settings, 0-100) over the strings of every update.

    Args:
        metric: ``bleu`` (13a tokenisation, exponential smoothing) or ``chrf`` (character 6-grams, beta 2).

    ``update(preds, target)`` takes hypothesis strings and one reference string each.
    """

    full_state_update = False

    def __init__(self, metric: Literal["bleu", "chrf"]) -> None:
        super().__init__()
        self.scorer = {"bleu": BLEU, "chrf": CHRF}[metric]()
        n_stats = len(self.scorer._extract_corpus_statistics(["a"], [["a"]])[0])
        self.add_state("stats", torch.zeros(n_stats, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], target: Sequence[str]) -> None:
        stats = self.scorer._extract_corpus_statistics(list(preds), [list(target)])
        if stats:
            self.stats += torch.tensor(stats, dtype=torch.long, device=self.stats.device).sum(dim=0)

    def compute(self) -> Tensor:
        score = self.scorer._compute_score_from_stats([int(s) for s in self.stats.tolist()])
        return torch.tensor(score.score, dtype=torch.float32)


def rouge_lsum_missing() -> str | None:
    """Why ``rougeLsum`` cannot be computed here (it splits sentences with nltk's ``punkt_tab`` model), or None."""
    how = "pip install nltk && python -m nltk.downloader punkt_tab (the download needs the network once)"
    try:
        import nltk
    except ImportError:
        return f"rougeLsum splits sentences with nltk, which is not installed: {how}"
    try:
        nltk.data.find("tokenizers/punkt_tab")
    except LookupError:
        return f"rougeLsum splits sentences with nltk's punkt_tab model, which is not downloaded: {how}"
    return None


class Rouge(ROUGEScore):
    """ROUGE F-measures (0-100) of hypothesis strings against one reference each: torchmetrics' ``ROUGEScore``
    with its defaults (lowercased alphanumeric words, no stemming), the mean over the pairs.

    ``rouge1`` and ``rouge2`` count shared word unigrams and bigrams, ``rougeL`` the longest common
    subsequence of words, ``rougeLsum`` the union LCS over sentences (split by nltk, see
    :func:`rouge_lsum_missing`); as Lin (2004) and Google's ``rouge-score``.

    Args:
        keys: which of :data:`ROUGE_KEYS` to compute; ``compute()`` returns ``{key: F-measure}``.

    ``update(preds, target)`` takes hypothesis strings and one reference string each.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        super().__init__(rouge_keys=tuple(keys))
        self.keys = tuple(keys)  # what compute() returns, each logged as <stage>/<key>

    def update(self, preds: Sequence[str], target: Sequence[str]) -> None:
        super().update(list(preds), [[t] for t in target])

    def compute(self) -> dict[str, Tensor]:
        scores = super().compute()
        return {key: 100 * scores[f"{key}_fmeasure"].float() for key in self.keys}
