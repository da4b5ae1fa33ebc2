"""Language modelling: causal (next token, decoder-only) and masked (BERT's 80/10/10, encoder-only)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from tfgraph.decoding import generate_text
from tfgraph.registry import ConfigError
from tfgraph.tasks.base import StepOutput, Task, token_accuracy, token_loss

STAGE_SEEDS = {"train": 0, "val": 1, "test": 2}


class CausalLM(Task):
    """Next-token prediction: ``logits[:, :-1]`` predict ``input_ids[:, 1:]`` (padding is not predicted).

    Logs ``loss``, ``perplexity`` and next-token ``accuracy``. The task remembers the longest context it was
    trained to predict from (``trained_context``, saved with the weights), and :meth:`generate` keeps its
    context that short: a window of T tokens trains positions 0..T-2 only, and the model's outputs at
    positions it never learned are noise.

    Args:
        **common: see :class:`~tfgraph.tasks.base.Task`.
    """

    name = "causal_lm"
    topologies = {"decoder_only": "next-token prediction"}
    perplexity = True

    def __init__(self, **common: Any) -> None:
        super().__init__(**common)
        self.register_buffer("trained_context", torch.tensor(0))

    def make_metrics(self) -> dict[str, Metric]:
        return {"accuracy": MeanMetric()}

    def compute(self, batch: dict[str, Tensor], stage: str, batch_idx: int) -> StepOutput:
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        self.check_length(ids.shape[1])
        if stage == "train":  # on the device: comparing with the buffer on the host would wait for it
            self.trained_context.clamp_(min=ids.shape[1] - 1)
        logits = self.model(ids, attention_mask=mask)
        targets = ids[:, 1:]
        if mask is not None:
            targets = targets.masked_fill(mask[:, 1:] == 0, -100)
        return token_loss(logits[:, :-1], targets)

    def update_metrics(self, metrics: nn.ModuleDict, batch: dict[str, Tensor], out: StepOutput) -> None:
        token_accuracy(metrics["accuracy"], out)

    @property
    def generation_context(self) -> int:
        """The most tokens :meth:`generate` holds in a sequence: one more than the trained context (the model does
        not read the last token), at most ``max_len``."""
        max_len = self.model.max_len
        trained = int(self.trained_context)
        return min(trained + 1, max_len) if trained else max_len

    def generate(self, prompt: str = "", max_new_tokens: int = 200, **options: Any) -> str:
        """Continue ``prompt`` (from ``<bos>`` when it is empty) and return the prompt and its continuation.

        Generation stops at ``<eos>``; a sequence longer than :attr:`generation_context` slides a window along
        (see :func:`tfgraph.decoding.generate_windowed`).

        Args:
            prompt: the text to continue.
            max_new_tokens: the most tokens to add.
            **options: the decoding settings of :func:`tfgraph.decoding.generate`: ``strategy`` (default
                ``"greedy"``), ``temperature``, ``top_k``, ``top_p``, ``seed``, ``use_cache``, ...
        """
        (completion,) = generate_text(
            self.model,
            self.tokenizer,
            [prompt],
            max_new_tokens=max_new_tokens,
            context=self.generation_context,
            **options,
        )[0]
        return prompt + completion.text


class MaskedLM(Task):
    """BERT's masked language modelling on an encoder.

    ``mask_prob`` of the non-special tokens are chosen; of those, ``mask_ratio`` become ``<mask>``,
    ``random_ratio`` a random non-special token and the rest stay as they are; the loss is over the chosen
    ones. The choice is drawn from a generator seeded by ``seed``, the stage and the step (the batch index in
    val/test), so evaluation is reproducible and a resumed run masks as an uninterrupted one.

    Logs ``loss``, ``perplexity`` and ``accuracy`` over the chosen tokens.

    Args:
        mask_prob: fraction of the tokens to predict.
        mask_ratio: of those, the fraction replaced by ``<mask>``.
        random_ratio: of those, the fraction replaced by a random token.
        head: the head block (``{block: mlm_head, ...}``); tied to the token embedding when the model ties
            its embeddings.
        seed: seed of the masking.
        **common: see :class:`~tfgraph.tasks.base.Task`.
    """

    name = "masked_lm"
    topologies = {"encoder_only": "BERT's masked-token prediction"}
    perplexity = True

    def __init__(
        self,
        *,
        mask_prob: float = 0.15,
        mask_ratio: float = 0.8,
        random_ratio: float = 0.1,
        head: dict[str, Any] | None = None,
        seed: int = 0,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if not (0 < mask_prob <= 1 and mask_ratio >= 0 and random_ratio >= 0 and mask_ratio + random_ratio <= 1):
            raise ConfigError.at(
                "task", "need 0 < mask_prob <= 1 and mask_ratio, random_ratio >= 0 with a sum of at most 1"
            )
        self.head = self.build_head(head, "mlm_head")
        if self.model.tie_embeddings and hasattr(self.head, "weight"):
            self.head.weight = self.model.embedding.weight
        # random replacements are drawn from the non-special ids, which follow the specials
        self.first_plain_id = max(self.tokenizer.special_ids) + 1

    def make_metrics(self) -> dict[str, Metric]:
        return {"accuracy": MeanMetric()}

    def mask_tokens(self, input_ids: Tensor, attention_mask: Tensor | None, generator: torch.Generator) -> tuple:
        """BERT's masking: (corrupted input ids, labels with -100 where nothing is predicted)."""
        special = torch.zeros_like(input_ids, dtype=torch.bool)
        for i in self.tokenizer.special_ids:
            special |= input_ids == i
        candidates = ~special if attention_mask is None else ~special & attention_mask.bool()
        rand = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
        chosen = candidates & (rand < self.hparams.mask_prob)
        # always predict something: the first candidate when none was chosen (decided on the device, no sync)
        flat = candidates.view(-1)
        first = torch.arange(flat.numel(), device=flat.device) == flat.to(torch.uint8).argmax()
        chosen |= first.view_as(chosen) & candidates & ~chosen.any()
        labels = input_ids.masked_fill(~chosen, -100)
        how = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
        to_mask = chosen & (how < self.hparams.mask_ratio)
        to_random = chosen & ~to_mask & (how < self.hparams.mask_ratio + self.hparams.random_ratio)
        random_ids = torch.randint(
            self.first_plain_id,
            self.tokenizer.vocab_size,
            input_ids.shape,
            generator=generator,
            device=input_ids.device,
        )
        corrupted = input_ids.masked_fill(to_mask, self.tokenizer.mask_id)
        corrupted = torch.where(to_random, random_ids, corrupted)
        return corrupted, labels

    def masking_generator(self, stage: str, step: int) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(hash((self.hparams.seed, STAGE_SEEDS[stage], step, self.global_rank)) % 2**62)
        return generator

    def compute(self, batch: dict[str, Tensor], stage: str, batch_idx: int) -> StepOutput:
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        step = self.global_step if stage == "train" else batch_idx
        corrupted, labels = self.mask_tokens(ids, mask, self.masking_generator(stage, step))
        logits = self.head(self.hidden_states(corrupted, mask))
        return token_loss(logits, labels)

    def update_metrics(self, metrics: nn.ModuleDict, batch: dict[str, Tensor], out: StepOutput) -> None:
        token_accuracy(metrics["accuracy"], out)
