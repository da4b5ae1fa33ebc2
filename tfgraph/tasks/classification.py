"""Classification: one label per sequence, or one BIO tag per word (tagging)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from tfgraph.tasks.base import StepOutput, Task, token_accuracy, token_loss
from tfgraph.tasks.metrics import EntityF1


class LabelTask(Task):
    """A task whose head maps hidden states to label logits; a decoder's unused LM head is dropped.

    Args:
        head: the head block (``{block: name, <its options>}``; ``block: null`` picks ``default_heads``).
        **common: see :class:`~tfgraph.tasks.base.Task`.
    """

    default_heads: ClassVar[dict[str, str]]  # the head of each topology unless task.head.block names one

    def __init__(self, *, head: dict[str, Any] | None = None, **common: Any) -> None:
        super().__init__(**common)
        self.drop_lm_head()
        n_labels = len(self.require_labels())
        self.head = self.build_head(head, self.default_heads[self.model.topology], n_labels=n_labels)


class SequenceClassification(LabelTask):
    """One label per sequence, from one pooled state: the first token's (``<bos>``) for an encoder, the last
    real token's for a decoder (the only one that has seen the whole sequence).

    Batches hold ``input_ids``, ``attention_mask`` and ``labels`` ``[B]``. Logs ``loss``, ``accuracy`` and
    ``macro_f1``. The head (see :class:`LabelTask`) is ``pooled_classifier`` for an encoder and
    ``linear_classifier`` for a decoder unless ``head.block`` names one.
    """

    name = "sequence_classification"
    topologies = {
        "encoder_only": "first token pooled",
        "decoder_only": "last token",
    }
    default_heads = {"encoder_only": "pooled_classifier", "decoder_only": "linear_classifier"}

    def make_metrics(self) -> dict[str, Metric]:
        n = len(self.require_labels())
        return {"accuracy": MulticlassAccuracy(n, average="micro"), "macro_f1": MulticlassF1Score(n, average="macro")}

    def compute(self, batch: dict[str, Tensor], stage: str, batch_idx: int) -> StepOutput:
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        h = self.hidden_states(ids, mask)
        if self.model.topology == "encoder_only":
            pooled = h[:, 0]
        else:
            last = (mask.sum(dim=1) - 1) if mask is not None else torch.full_like(ids[:, 0], ids.shape[1] - 1)
            pooled = h[torch.arange(h.shape[0], device=h.device), last]
        return token_loss(self.head(pooled), batch["labels"])

    def update_metrics(self, metrics: nn.ModuleDict, batch: dict[str, Tensor], out: StepOutput) -> None:
        preds = out.logits.argmax(dim=-1)
        metrics["accuracy"].update(preds, out.labels)
        metrics["macro_f1"].update(preds, out.labels)


class TokenClassification(LabelTask):
    """One tag per word (BIO tagging), predicted at the word's first subword.

    Batches hold ``input_ids``, ``attention_mask`` and ``labels`` ``[B, T]``: a word's tag id on its first
    subword and -100 elsewhere. Logs ``loss``, tag ``accuracy`` and entity-level ``precision``, ``recall`` and
    ``f1`` (exact span match, as conlleval). A decoder tags from the left context only.

    The head (see :class:`LabelTask`) is ``linear_classifier`` unless ``head.block`` names one.
    """

    name = "token_classification"
    topologies = {
        "encoder_only": "bidirectional tagging",
        "decoder_only": "left-to-right tagging",
    }
    default_heads = {"encoder_only": "linear_classifier", "decoder_only": "linear_classifier"}

    def make_metrics(self) -> dict[str, Metric]:
        return {"accuracy": MeanMetric(), "entity": EntityF1()}

    def compute(self, batch: dict[str, Tensor], stage: str, batch_idx: int) -> StepOutput:
        h = self.hidden_states(batch["input_ids"], batch.get("attention_mask"))
        return token_loss(self.head(h), batch["labels"])

    def update_metrics(self, metrics: nn.ModuleDict, batch: dict[str, Tensor], out: StepOutput) -> None:
        token_accuracy(metrics["accuracy"], out)
        names = self.label_names
        preds, targets = [], []
        for pred_row, label_row in zip(out.logits.argmax(dim=-1), out.labels, strict=True):
            keep = label_row != -100
            preds.append([names[i] for i in pred_row[keep].tolist()])
            targets.append([names[i] for i in label_row[keep].tolist()])
        metrics["entity"].update(preds, targets)
