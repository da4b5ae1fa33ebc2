"""Sequence to sequence: an encoder-decoder with teacher forcing, or a decoder-only model as a prefix LM."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from tfgraph.decoding import generate, pad_prompts
from tfgraph.tasks.base import StepOutput, Task, token_accuracy, token_loss
from tfgraph.tasks.metrics import CorpusScore


class Seq2Seq(Task):
    """Map a source to a target.

    Batches hold ``input_ids``/``attention_mask`` (the source) and ``labels`` (target ids and ``<eos>``,
    padded with -100).

    - encoder_decoder: the decoder reads ``<bos>`` and the target shifted right (teacher forcing).
    - decoder_only (prefix LM): one sequence ``source <eos> target``, the loss over the target only.

    Val/test also decode greedily and score the decoded strings against the references: ``bleu`` and ``chrf``
    (sacrebleu's, 0-100) and ``exact_match``; besides ``loss``, ``perplexity`` and teacher-forced token
    ``accuracy``.

    Args:
        generate: decode in val/test for bleu, chrf and exact_match (off: loss and accuracy only, faster).
        max_new_tokens: the longest decoded output (``None``: twice the longest reference of the batch plus 8).
        **common: see :class:`~tfgraph.tasks.base.Task`.
    """

    name = "seq2seq"
    topologies = {
        "encoder_decoder": "teacher forcing",
        "decoder_only": "prefix LM over `source <eos> target`",
    }
    perplexity = True

    def __init__(self, *, generate: bool = True, max_new_tokens: int | None = None, **common: Any) -> None:
        super().__init__(**common)

    def make_metrics(self) -> dict[str, Metric]:
        if not self.hparams.generate:
            return {"accuracy": MeanMetric()}
        return {
            "accuracy": MeanMetric(),
            "bleu": CorpusScore("bleu"),
            "chrf": CorpusScore("chrf"),
            "exact_match": MeanMetric(),
        }

    # ---------------------------------------------------------------------------------------- teacher forcing

    def compute(self, batch: dict[str, Tensor], stage: str, batch_idx: int) -> StepOutput:
        if self.model.topology == "encoder_decoder":
            return self._encoder_decoder_loss(batch)
        return self._prefix_lm_loss(batch)

    def _encoder_decoder_loss(self, batch: dict[str, Tensor]) -> StepOutput:
        src, src_mask, labels = batch["input_ids"], batch.get("attention_mask"), batch["labels"]
        self.check_length(max(src.shape[1], labels.shape[1]))
        bos = torch.full_like(labels[:, :1], self.tokenizer.bos_id)
        dec_in = torch.cat([bos, labels[:, :-1].masked_fill(labels[:, :-1] == -100, self.tokenizer.pad_id)], dim=1)
        dec_mask = torch.cat([torch.ones_like(bos), (labels[:, :-1] != -100).long()], dim=1)
        logits = self.model(src, attention_mask=src_mask, decoder_input_ids=dec_in, decoder_attention_mask=dec_mask)
        return token_loss(logits, labels)

    def _prefix_lm_loss(self, batch: dict[str, Tensor]) -> StepOutput:
        ids, mask, labels = self._prefix_lm_batch(batch)
        self.check_length(ids.shape[1] - 1)
        logits = self.model(ids[:, :-1], attention_mask=mask[:, :-1])
        return token_loss(logits, labels[:, 1:])

    def _prefix_lm_batch(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Rows ``source <eos> target`` (right-padded), their mask, and labels on the target positions only."""
        pad, sep = self.tokenizer.pad_id, self.tokenizer.eos_id
        rows = []
        for source, target in zip(self._sources(batch), self._targets(batch), strict=True):
            rows.append((torch.cat([source, source.new_tensor([sep]), target]), len(source) + 1))
        length = max(len(seq) for seq, _ in rows)
        src = batch["input_ids"]
        ids = src.new_full((len(rows), length), pad)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (seq, start) in enumerate(rows):
            ids[i, : len(seq)] = seq
            mask[i, : len(seq)] = 1
            labels[i, start : len(seq)] = seq[start:]
        return ids, mask, labels

    @staticmethod
    def _sources(batch: dict[str, Tensor]) -> list[Tensor]:
        src, mask = batch["input_ids"], batch.get("attention_mask")
        if mask is None:
            return list(src)
        return [row[m.bool()] for row, m in zip(src, mask, strict=True)]

    @staticmethod
    def _targets(batch: dict[str, Tensor]) -> list[Tensor]:
        return [row[row != -100] for row in batch["labels"]]

    # ------------------------------------------------------------------------------------------- decoding

    def update_metrics(self, metrics: nn.ModuleDict, batch: dict[str, Tensor], out: StepOutput) -> None:
        token_accuracy(metrics["accuracy"], out)
        if not self.hparams.generate:
            return
        predictions = self.translate(batch)
        references = [self.tokenizer.decode(t.tolist()) for t in self._targets(batch)]
        metrics["bleu"].update(predictions, references)
        metrics["chrf"].update(predictions, references)
        metrics["exact_match"].update(
            torch.tensor([p == r for p, r in zip(predictions, references, strict=True)], dtype=torch.float)
        )

    @torch.no_grad()
    def translate(self, batch: dict[str, Tensor]) -> list[str]:
        """Greedy outputs for the sources of a batch, decoded to strings (up to the first ``<eos>``)."""
        longest = int((batch["labels"] != -100).sum(dim=1).max())
        max_new = self.hparams.max_new_tokens or 2 * longest + 8
        max_len = self.model.spec.sizes["max_len"]
        bos, eos = self.tokenizer.bos_id, self.tokenizer.eos_id
        if self.model.topology == "encoder_decoder":
            sources, mask = batch["input_ids"], batch.get("attention_mask")
            options = {"decoder_start_token_id": bos, "max_new_tokens": min(max_new, max_len)}
        else:  # prefix LM: continue `source <eos>`, left-padded
            prompts = [torch.cat([s, s.new_tensor([eos])]) for s in self._sources(batch)]
            sources, mask = pad_prompts(prompts, self.tokenizer.pad_id)
            if sources.shape[1] >= max_len:
                return [""] * len(sources)
            options = {"max_new_tokens": min(max_new, max_len - sources.shape[1])}
        new = generate(self.model, sources, mask, strategy="greedy", eos_token_id=eos, **options).sequences
        return [self._text(row, eos) for row in new]

    def _text(self, ids: Tensor, eos: int) -> str:
        ids = ids.tolist()
        return self.tokenizer.decode(ids[: ids.index(eos)] if eos in ids else ids)
