"""The training step reads no tensor's value on the host: no ``.item()``, ``bool()``, ``int()`` of a tensor, no
data-dependent shape (``nonzero``, boolean indexing), which would make a GPU wait for the host every step.

On a CPU nothing waits, so the check is of the code path: a dispatch mode sees every op the step runs (inside
Lightning's own ``fit``: the task's ``training_step``, its logging, and ``backward``) and refuses the ops that
would sync a GPU. The host-side work of a batch (dropping a mask without padding, joining a prefix LM's rows) runs
in ``on_before_batch_transfer``, before the batch reaches the device, and is not guarded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.test_tasks import make_task

aten = torch.ops.aten
# ops whose result the host must read (a value, or a shape that depends on values)
SYNC_OPS = {
    aten._local_scalar_dense.default,  # .item(), bool(t), int(t), float(t)
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.unique_dim.default,
}


class HostSyncError(AssertionError):
    """An op in a guarded region would make the device wait for the host."""


class RefuseHostSync(TorchDispatchMode):
    """Raise :class:`HostSyncError` on every op that reads a tensor's value on the host."""

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in SYNC_OPS or (
            func.overloadpacket in (aten.index, aten.index_put_, aten.index_put) and bool_index(args)
        ):
            raise HostSyncError(f"{func} reads a tensor on the host")
        return func(*args, **kwargs)


def bool_index(args: tuple) -> bool:
    """Whether an index op's indices hold a boolean mask (its result's shape depends on the mask's values)."""
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


@contextmanager
def no_host_sync() -> Iterator[None]:
    with RefuseHostSync():
        yield


def guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        with no_host_sync():
            return method(*args, **kwargs)

    return call


def test_the_guard_refuses_each_kind_of_host_read() -> None:
    x = torch.ones(4)
    for read in (lambda: bool(x.all()), lambda: int(x.sum()), lambda: x.sum().item(), lambda: x[x > 0]):
        with pytest.raises(HostSyncError), no_host_sync():
            read()
    with no_host_sync():  # device-side work passes
        (x * 2).clamp(min=1).sum()
        x[torch.tensor([0, 2])]


B, T = 4, 12
PAD = 0


def lm_batch(padded: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 20, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if padded:
        mask[1, 7:] = 0
        mask[3, 4:] = 0
        ids = ids.masked_fill(mask == 0, PAD)
    return {"input_ids": ids, "attention_mask": mask}


def pair_batch() -> dict[str, torch.Tensor]:
    batch = lm_batch(padded=True)
    labels = torch.randint(5, 20, (B, 6), generator=torch.Generator().manual_seed(1))
    labels[0, 4:] = -100
    labels[2, 2:] = -100
    return {**batch, "labels": labels}


def label_batch(tagging: bool) -> dict[str, torch.Tensor]:
    batch = lm_batch(padded=True)
    if tagging:
        labels = torch.randint(0, 2, (B, T), generator=torch.Generator().manual_seed(2))
        return {**batch, "labels": labels.masked_fill(batch["attention_mask"] == 0, -100)}
    return {**batch, "labels": torch.tensor([0, 1, 1, 0])}


LABELS = ["a", "b"]
CASES = {  # task, preset, label names, batch
    "causal_lm-gpt2_tiny": ("causal_lm", "gpt2_tiny", None, lambda: lm_batch(padded=False)),
    "causal_lm-gpt2_tiny-padded": ("causal_lm", "gpt2_tiny", None, lambda: lm_batch(padded=True)),
    "causal_lm-llama_tiny-padded": ("causal_lm", "llama_tiny", None, lambda: lm_batch(padded=True)),
    "masked_lm-bert_tiny-padded": ("masked_lm", "bert_tiny", None, lambda: lm_batch(padded=True)),
    "seq2seq-t5_tiny": ("seq2seq", "t5_tiny", None, pair_batch),
    "seq2seq-transformer_tiny": ("seq2seq", "transformer_tiny", None, pair_batch),
    "seq2seq-gpt2_tiny-prefix_lm": ("seq2seq", "gpt2_tiny", None, pair_batch),
    "sequence_classification-bert_tiny": ("sequence_classification", "bert_tiny", LABELS, lambda: label_batch(False)),
    "sequence_classification-gpt2_tiny": ("sequence_classification", "gpt2_tiny", LABELS, lambda: label_batch(False)),
    "token_classification-bert_tiny": ("token_classification", "bert_tiny", LABELS, lambda: label_batch(True)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_training_step_reads_nothing_on_the_host(case: str) -> None:
    name, preset, label_names, make_batch = CASES[case]
    task = make_task(name, preset, label_names=label_names)
    batch = make_batch()
    steps = []
    task.training_step = guarded(lambda b, i, step=task.training_step: steps.append(i) or step(b, i))
    task.backward = guarded(task.backward)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
    )
    trainer.fit(task, train_dataloaders=torch.utils.data.DataLoader([batch, batch], batch_size=None))
    assert steps == [0, 1]


def test_a_mask_without_padding_is_dropped_on_the_host_before_the_batch_moves() -> None:
    from tfgraph.tasks.base import drop_full_mask

    full, padded = lm_batch(padded=False), lm_batch(padded=True)
    assert "attention_mask" not in drop_full_mask(full) and "input_ids" in drop_full_mask(full)
    assert drop_full_mask(padded)["attention_mask"] is padded["attention_mask"]
    task = make_task("causal_lm", "gpt2_tiny")
    assert "attention_mask" not in task.on_before_batch_transfer(full, 0)
