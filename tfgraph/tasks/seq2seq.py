"""Sequence to sequence: an encoder-decoder with teacher forcing, or a decoder-only model as a prefix LM."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from tfgraph.decoding import generate, pad_prompts
from tfgraph.registry import ConfigError, suggest
from tfgraph.tasks.base import StepOutput, Task, token_accuracy, token_loss
from tfgraph.tasks.metrics import ROUGE_KEYS, CorpusScore, Rouge, rouge_lsum_missing

# what val/test can score decoded strings by (``task.metrics``); loss, perplexity and accuracy are always logged
METRICS = ("bleu", "chrf", "exact_match", *ROUGE_KEYS)
DEFAULT_METRICS = ("bleu", "chrf", "exact_match")
PREFIX_KEYS = ("prefix_input_ids", "prefix_attention_mask", "prefix_labels")  # a prefix LM's rows, from the host


class Seq2Seq(Task):
    """Map a source to a target.

    Batches hold ``input_ids``/``attention_mask`` (the source) and ``labels`` (target ids and ``<eos>``,
    padded with -100).

    - encoder_decoder: the decoder reads ``<bos>`` and the target shifted right (teacher forcing).
    - decoder_only (prefix LM): one sequence ``source <eos> target``, the loss over the target only.

    Val/test also decode (greedily, or with beam search) and score the decoded strings against the references
    by ``metrics``: ``bleu`` and ``chrf`` (sacrebleu's), ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``
    (torchmetrics' ROUGE F-measures), all 0-100, and ``exact_match``; besides ``loss``, ``perplexity`` and
    teacher-forced token ``accuracy``, always logged.

    Args:
        generate: decode in val/test for the metrics (off: loss and accuracy only, faster).
        max_new_tokens: the longest decoded output (``None``: twice the longest reference of the batch plus 8).
        metrics: what to score the decoded strings by, of :data:`METRICS` (``None``: bleu, chrf, exact_match).
        num_beams: beams of val and test decoding (1: greedy).
        test_num_beams: beams of test decoding (``None``: ``num_beams``).
        length_penalty: beam search ranks a hypothesis by ``sum log p / length ** length_penalty``.
        **common: see :class:`~tfgraph.tasks.base.Task`.
    """

    name = "seq2seq"
    topologies = {
        "encoder_decoder": "teacher forcing",
        "decoder_only": "prefix LM over `source <eos> target`",
    }
    perplexity = True

    def __init__(
        self,
        *,
        generate: bool = True,
        max_new_tokens: int | None = None,
        metrics: list[str] | None = None,
        num_beams: int = 1,
        test_num_beams: int | None = None,
        length_penalty: float = 1.0,
        **common: Any,
    ) -> None:
        check_decoding(
            metrics=metrics, num_beams=num_beams, test_num_beams=test_num_beams, length_penalty=length_penalty
        )
        super().__init__(**common)

    def make_metrics(self) -> dict[str, Metric]:
        metrics: dict[str, Metric] = {"accuracy": MeanMetric()}
        if not self.hparams.generate:
            return metrics
        chosen = list(dict.fromkeys(self.hparams.get("metrics") or DEFAULT_METRICS))
        for name in chosen:
            if name in ("bleu", "chrf"):
                metrics[name] = CorpusScore(name)
            elif name == "exact_match":
                metrics[name] = MeanMetric()
        rouge = [name for name in chosen if name in ROUGE_KEYS]
        if rouge:
            metrics["rouge"] = Rouge(rouge)
        return metrics

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

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A prefix LM's rows ``source <eos> target`` are cut and joined on the host, before the batch moves to the
        device (keys ``prefix_input_ids``, ``prefix_attention_mask``, ``prefix_labels``): the step reads no lengths
        off the device."""
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        if self.model.topology == "decoder_only" and isinstance(batch, dict) and "labels" in batch:
            batch = dict(zip(PREFIX_KEYS, self._prefix_lm_batch(batch), strict=True)) | batch
        return batch

    def _prefix_lm_loss(self, batch: dict[str, Tensor]) -> StepOutput:
        if PREFIX_KEYS[0] in batch:  # prepared on the host (on_before_batch_transfer)
            ids, mask, labels = (batch[key] for key in PREFIX_KEYS)
        else:
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
        testing = metrics is self.metrics["test"]
        beams = self.hparams.get("num_beams", 1)
        if testing and self.hparams.get("test_num_beams") is not None:
            beams = self.hparams.test_num_beams
        predictions = self.translate(batch, num_beams=beams)
        references = [self.tokenizer.decode(t.tolist()) for t in self._targets(batch)]
        for name, metric in metrics.items():
            if name == "exact_match":
                same = [p == r for p, r in zip(predictions, references, strict=True)]
                metric.update(torch.tensor(same, dtype=torch.float))
            elif name not in ("loss", "accuracy"):
                metric.update(predictions, references)

    @torch.no_grad()
    def translate(self, batch: dict[str, Tensor], *, num_beams: int = 1) -> list[str]:
        """Greedy (or, with ``num_beams`` > 1, beam search) outputs for the sources of a batch, decoded to strings
        (up to the first ``<eos>``)."""
        longest = int((batch["labels"] != -100).sum(dim=1).max())
        max_new = self.hparams.max_new_tokens or 2 * longest + 8
        max_len = self.model.max_len
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
        if num_beams > 1:
            length_penalty = self.hparams.get("length_penalty", 1.0)
            options.update(strategy="beam", num_beams=num_beams, length_penalty=length_penalty)
        new = generate(self.model, sources, mask, eos_token_id=eos, **options).sequences
        return [self._text(row, eos) for row in new]

    def _text(self, ids: Tensor, eos: int) -> str:
        ids = ids.tolist()
        return self.tokenizer.decode(ids[: ids.index(eos)] if eos in ids else ids)


def check_decoding(
    *, metrics: Any = None, num_beams: Any = 1, test_num_beams: Any = None, length_penalty: Any = 1.0
) -> None:
    """Raise one ConfigError with every problem of seq2seq's decoding settings (``task.metrics``, the beams)."""
    problems = []
    if metrics is not None:
        if not isinstance(metrics, (list, tuple)) or not all(isinstance(m, str) for m in metrics):
            problems.append(("task.metrics", f"expected a list of metric names, got {metrics!r}"))
        else:
            for name in metrics:
                if name not in METRICS:
                    problems.append(
                        (
                            "task.metrics",
                            f"unknown metric {name!r}{suggest(name, METRICS)}; seq2seq's metrics are "
                            f"{', '.join(METRICS)} (loss, perplexity and accuracy are always logged)",
                        )
                    )
            if "rougeLsum" in metrics and (missing := rouge_lsum_missing()):
                problems.append(("task.metrics", missing))
    for key, value, least in (("num_beams", num_beams, 1), ("test_num_beams", test_num_beams, 1)):
        if value is None and key == "test_num_beams":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            problems.append((f"task.{key}", f"expected a whole number of beams, at least {least}, got {value!r}"))
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
        problems.append(("task.length_penalty", f"expected a number, got {length_penalty!r}"))
    if problems:
        raise ConfigError(problems)
