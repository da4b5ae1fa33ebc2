"""What every task shares: the model built from a plain config, the topology check, heads from the registry,
the train/val/test loop with metrics, the MoE loss, optimizers and checkpoints that hold plain containers only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torchmetrics import MeanMetric, Metric

from tfgraph.data.examples import ResumableLoader
from tfgraph.data.tokenizers import Tokenizer
from tfgraph.models import Transformer, build_model
from tfgraph.models.build import init_weights
from tfgraph.models.transformer import Stack
from tfgraph.registry import ConfigError, Problems, bind, lookup
from tfgraph.tasks.optim import build_optimizer, build_scheduler, check_optimizer, check_scheduler, decay_plan

# the format of what on_save_checkpoint writes; tfgraph.tasks.checkpoint reads up to it (raise it on a change that
# older tfgraphs cannot read)
CHECKPOINT_FORMAT = 1
STAGES = ("val", "test")  # stages with epoch-level metrics (training logs per step)
DEFAULT_OPTIMIZER = {"name": "adamw"}
# tiny presets of each topology, named in the message that refuses a task/topology pair
# the top-level `compile` key: false (eager), true (the whole model, one graph), layers (each layer graph apart)
COMPILE_MODES = (False, True, "layers")
EXAMPLE_PRESETS = {
    "decoder_only": ("gpt2_tiny", "llama_tiny"),
    "encoder_only": ("bert_tiny",),
    "encoder_decoder": ("transformer_tiny", "t5_tiny"),
}


@dataclass
class StepOutput:
    """One batch through a task: the mean loss over ``count`` predictions (a 0-d tensor, so that counting them
    waits for no device), and what the metrics need."""

    loss: Tensor
    count: Tensor
    logits: Tensor | None = None
    labels: Tensor | None = None


class Task(pl.LightningModule):
    """A model, a head, a loss and metrics for one task.

    Every constructor argument is a plain container (dict, list, str, number), so that
    ``save_hyperparameters()`` puts nothing else into a checkpoint and the checkpoint alone rebuilds the task:
    ``type(task)(**checkpoint["hyper_parameters"])``.

    Args:
        model: the resolved model config (``tfgraph.build_model`` builds it); ``vocab_size`` must cover the
            tokenizer's.
        tokenizer: the tokenizer as JSON (``Tokenizer.to_json()``).
        label_names: class or tag names (classification and tagging tasks).
        optimizer: ``{name: adamw, lr: ..., ...}`` (see :mod:`tfgraph.tasks.optim`).
        scheduler: ``{name: cosine, warmup_steps: ..., ...}``, or ``None`` for a constant learning rate.
        data: the data config the task was trained with; not used by the task, kept in the checkpoint so that
            evaluation can rebuild the splits.
        aux_loss_weight: weight of the model's mixture-of-experts load-balancing loss in the training loss.
    """

    name: ClassVar[str]
    topologies: ClassVar[dict[str, str]]  # the topologies that fit, and how the task uses each
    perplexity: ClassVar[bool] = False  # whether the loss is a per-token LM loss (logs exp(loss) as perplexity)
    compile_mode: bool | str = False  # the top-level `compile` setting (compile_model), applied by configure_model

    def __init__(
        self,
        *,
        model: dict[str, Any],
        tokenizer: str,
        label_names: list[str] | None = None,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        aux_loss_weight: float = 0.01,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        check_plain(dict(self.hparams), "task")
        self.check_topology(model.get("topology"))
        check_optimizer(optimizer or DEFAULT_OPTIMIZER)
        if scheduler is not None:
            check_scheduler(scheduler)
        self.tokenizer = Tokenizer.from_json(tokenizer)
        if model.get("vocab_size", 0) < self.tokenizer.vocab_size:
            raise ConfigError.at(
                "model.vocab_size",
                f"{model.get('vocab_size')} is smaller than the tokenizer's {self.tokenizer.vocab_size} ids",
            )
        self.model: Transformer = build_model(model)
        self.label_names = list(label_names) if label_names is not None else None
        self.metrics = nn.ModuleDict(
            {stage: nn.ModuleDict({"loss": MeanMetric(), **self.make_metrics()}) for stage in STAGES}
        )

    # ------------------------------------------------------------------------------------------ building

    @classmethod
    def check_topology(cls, topology: str | None) -> None:
        """Raise a ConfigError unless the task fits the topology, saying which topologies fit."""
        if topology in cls.topologies:
            return
        fits = "; ".join(
            f"{t} ({how}), e.g. " + " or ".join(f"model={p}" for p in EXAMPLE_PRESETS.get(t, ()))
            for t, how in cls.topologies.items()
        )
        raise ConfigError.at(
            "model.topology", f"task {cls.name} does not fit a model of topology {topology}. It fits: {fits}"
        )

    def require_labels(self) -> list[str]:
        """The label names, which a classification task cannot do without."""
        if not self.label_names or len(self.label_names) < 2:
            raise ConfigError.at(
                "data", f"task {self.name} needs at least two label names from the data, got {self.label_names}"
            )
        return self.label_names

    def build_head(self, cfg: Mapping[str, Any] | None, default: str, **sizes: int) -> nn.Module:
        """A registered head block from a task config (``{block: name, <its own options>}``).

        Model-level sizes and ``sizes`` (``n_labels``) reach it by parameter name; its weights are initialised
        as the model's.
        """
        options = dict(cfg or {})
        name = options.pop("block", None) or default
        problems = Problems()
        cls = lookup("head", name, "task.head.block", problems)
        problems.raise_if_any()
        kwargs = bind(cls, options, context={**self.model.sizes, **sizes}, path="task.head", problems=problems)
        problems.raise_if_any()
        head = cls(**kwargs)
        init_weights(head, self.model.init_std)
        return head

    def make_metrics(self) -> dict[str, Metric]:
        """The task's val/test metrics besides the loss (one fresh set per stage)."""
        return {}

    def metric_names(self, stage: str) -> list[str]:
        """What the task logs as ``<stage>/<name>`` (``train``, ``val`` or ``test``)."""
        names = ["loss"] + (["perplexity"] if self.perplexity else [])
        if stage == "train":
            return names + (["aux_loss"] if self.model.has_aux_loss else [])
        for name, metric in self.metrics["val"].items():
            names += [] if name == "loss" else list(getattr(metric, "keys", (name,)))
        return names

    # --------------------------------------------------------------------------------------------- steps

    def configure_model(self) -> None:
        """Lightning's hook in each process before the strategy wraps the model: which parameters get weight decay
        is decided here, from the unwrapped names (:func:`~tfgraph.tasks.optim.decay_plan`: FSDP, DDP and one process
        decay the same tensors), and the model is compiled as ``compile_mode`` says (the top-level ``compile``
        setting, which :func:`tfgraph.train` sets; here, after DDP's workers are spawned, since compiled functions
        do not pickle). Once per task."""
        if getattr(self, "_decay_plan", None) is None:
            self._decay_plan = decay_plan(self)
        mode = getattr(self, "compile_mode", False)
        if mode is not False and not getattr(self, "_compiled_as", None):
            compile_model(self.model, mode)
            self._compiled_as = mode

    def on_train_epoch_start(self) -> None:
        """An epoch ends at Lightning's limit of batches (``limit_train_batches``, ``overfit_batches``), not at the
        loader's length: a resumable loader learns the limit, so that a checkpoint taken after the epoch's last
        batch resumes with a new epoch instead of skipping that many batches of it."""
        loader = self.trainer.train_dataloader
        if isinstance(loader, ResumableLoader):
            loader.epoch_batches = self.trainer.num_training_batches

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Host-side preparation of a batch, before Lightning moves it to the device: an attention mask without
        padding is dropped here, where looking at it costs no device sync, so attention takes its unmasked (causal)
        path; the steps themselves never read a tensor's value on the host."""
        return drop_full_mask(batch)

    def compute(self, batch: dict[str, Tensor], stage: str, batch_idx: int) -> StepOutput:
        """Run one batch: the loss and what the metrics need."""
        raise NotImplementedError

    def update_metrics(self, metrics: nn.ModuleDict, batch: dict[str, Tensor], out: StepOutput) -> None:
        """Update the task's own val/test metrics (the loss is done)."""

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.compute(batch, "train", batch_idx)
        loss = out.loss
        size = batch["input_ids"].shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=size)
        if self.perplexity:
            self.log("train/perplexity", out.loss.detach().exp(), batch_size=size)
        aux = self.model.aux_loss()
        if aux is not None:
            self.log("train/aux_loss", aux, batch_size=size)
            loss = loss + self.hparams.aux_loss_weight * aux
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", batch_idx)

    def _eval_step(self, batch: dict[str, Tensor], stage: str, batch_idx: int) -> None:
        out = self.compute(batch, stage, batch_idx)
        metrics = self.metrics[stage]
        metrics["loss"].update(out.loss.detach(), weight=out.count)
        self.update_metrics(metrics, batch, out)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def _log_epoch(self, stage: str) -> None:
        for name, metric in self.metrics[stage].items():
            if not metric.update_called:
                continue
            value = metric.compute()
            for key, v in value.items() if isinstance(value, dict) else [(name, value)]:
                self.log(f"{stage}/{key}", v.float(), prog_bar=key == "loss", sync_dist=True)
            if name == "loss" and self.perplexity:
                self.log(f"{stage}/perplexity", value.exp(), sync_dist=True)
            metric.reset()

    # ------------------------------------------------------------------------------- optimisation, saving

    def configure_optimizers(self) -> dict[str, Any]:
        plan = getattr(self, "_decay_plan", None)  # made before any wrapping (configure_model)
        optimizer = build_optimizer(self, self.hparams.optimizer or DEFAULT_OPTIMIZER, plan=plan)
        if self.hparams.scheduler is None:
            return {"optimizer": optimizer}
        # max_steps when set: asking the trainer to estimate makes it build the train loader before a resumed
        # run's state is restored, and Lightning then drops the loader's mid-epoch position
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigError.at(
                "trainer.max_steps", "the learning-rate schedule needs the run's length: set trainer.max_steps"
            )
        scheduler = build_scheduler(optimizer, self.hparams.scheduler, int(total))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping, but under FSDP by the norm over every shard (FSDP's ``clip_grad_norm_``: the norm
        one process would clip by), which Lightning's FSDP precision plugin refuses to do."""
        wrapped = self.trainer.model
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and isinstance(wrapped, FSDP):
            wrapped.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tfgraph"] = {"task": self.name, "format": CHECKPOINT_FORMAT}
        if self.trainer.world_size == 1:  # the random state dropout draws from, so a resumed run draws the same
            checkpoint["rng_state"] = {"cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("rng_state")
        if rng is None or self._trainer is None or self.trainer.world_size != 1:
            return
        torch.set_rng_state(rng["cpu"])
        if torch.cuda.is_available() and len(rng.get("cuda", ())) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])

    # ----------------------------------------------------------------------------------------- helpers

    def check_length(self, length: int) -> None:
        """Refuse sequences longer than the model's positions reach."""
        max_len = self.model.max_len
        if length > max_len:
            raise ValueError(
                f"task {self.name}: a sequence of {length} tokens exceeds model.max_len={max_len}; "
                "raise model.max_len or give the data shorter sequences"
            )

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """The last layer's states ``[B, T, d_model]`` of an encoder_only or decoder_only model (no LM head)."""
        self.check_length(input_ids.shape[1])
        return self.model.hidden_states(input_ids, attention_mask)

    def drop_lm_head(self) -> None:
        """Remove a decoder's LM head that the task does not use (no unused parameters under DDP, no dead
        weights in checkpoints)."""
        if getattr(self.model, "head", None) is not None:
            self.model.head = None


def check_compile(mode: Any) -> bool | str:
    """The top-level ``compile`` setting checked: ``false``, ``true`` or ``layers`` (a ConfigError otherwise)."""
    if mode is None:
        return False
    if not any(mode is m or (isinstance(m, str) and mode == m) for m in COMPILE_MODES):
        raise ConfigError.at(
            "compile",
            f"expected false, true (torch.compile the whole model) or layers (each layer graph apart), got {mode!r}",
        )
    return mode


def compile_model(model: nn.Module, mode: bool | str, *, backend: str = "inductor") -> nn.Module:
    """``torch.compile`` the layers of a model's stacks in place, as the top-level ``compile`` setting says: for
    the forward without a cache (training and evaluation, every task), while generating from a KV cache stays
    eager. Parameter names, and so checkpoints, stay as they are.

    Args:
        model: the model (a task's ``model``), or any module holding stacks.
        mode: ``True``: each stack's layers as one graph; ``"layers"``: each
            :class:`~tfgraph.graph.LayerGraph` apart (regional compilation: layers that share their code compile
            once, so a deep model starts sooner); ``False``: nothing.
        backend: the ``torch.compile`` backend (``inductor``; ``aot_eager`` traces without generating code).

    Returns:
        ``model`` itself.
    """
    mode = check_compile(mode)
    if mode is not False:
        for module in model.modules():
            if isinstance(module, Stack):
                module.compile_layers(together=mode is True, backend=backend)
    return model


def drop_full_mask(batch: Any) -> Any:
    """The batch without its ``attention_mask`` where that mask is on the CPU and has no padding (a model reads a
    missing mask as all ones, and attention then takes its fast unmasked path); any other batch as it is."""
    if not isinstance(batch, Mapping):
        return batch
    mask = batch.get("attention_mask")
    if isinstance(mask, Tensor) and mask.device.type == "cpu" and bool(mask.all()):
        return {key: value for key, value in batch.items() if key != "attention_mask"}
    return batch


def token_loss(logits: Tensor, labels: Tensor) -> StepOutput:
    """Mean cross-entropy over the labels that are not -100. logits: [..., C], labels: [...].

    The sum over the labelled positions divided by their count (at least 1), all on the device: a batch with
    nothing to predict gives a zero loss that still reaches every logit, and no value is read on the host.
    """
    count = (labels != -100).sum()
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return StepOutput(loss=total / count.clamp(min=1), count=count, logits=logits, labels=labels)


def token_accuracy(metric: Metric, out: StepOutput) -> None:
    """Update a MeanMetric with the top-1 accuracy of the labelled positions of ``out``."""
    keep = out.labels != -100
    if keep.any():
        metric.update((out.logits.argmax(dim=-1)[keep] == out.labels[keep]).float())


def check_plain(value: Any, path: str) -> None:
    """Raise TypeError unless ``value`` is made of dicts with str keys, lists, tuples, str, numbers and None."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: a task takes plain containers only; key {key!r} is not a string")
            check_plain(item, f"{path}.{key}")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{path}[{i}]")
        return
    raise TypeError(
        f"{path}: a task takes plain containers only (dict, list, str, numbers), so that its checkpoints load "
        f"with torch.load(weights_only=True); got {type(value).__name__}"
    )
