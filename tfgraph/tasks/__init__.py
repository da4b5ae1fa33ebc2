"""Tasks: one LightningModule per task, each owning its head, loss, metrics and (generative ones) decoding.

=========================  =======================================================================
task                       topologies
=========================  =======================================================================
causal_lm                  decoder_only
masked_lm                  encoder_only (BERT's 80/10/10 masking)
seq2seq                    encoder_decoder (teacher forcing), decoder_only (prefix LM)
sequence_classification    encoder_only (first token pooled), decoder_only (last token)
token_classification       encoder_only, decoder_only (BIO tagging)
=========================  =======================================================================

A task is built from plain containers only, and :func:`load_task` rebuilds it from a checkpoint alone, which is
data, never code (:mod:`tfgraph.tasks.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tfgraph.registry import ConfigError, suggest
from tfgraph.tasks.base import StepOutput, Task
from tfgraph.tasks.checkpoint import (
    DATA_MODULES,
    FORMAT,
    check_checkpoint,
    check_resumable,
    data_module_class,
    load_checkpoint,
    load_task,
    stored_locations,
    trust_options,
)
from tfgraph.tasks.classification import SequenceClassification, TokenClassification
from tfgraph.tasks.language_modeling import CausalLM, MaskedLM
from tfgraph.tasks.optim import check_keys, keyword_params
from tfgraph.tasks.seq2seq import Seq2Seq

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (CausalLM, MaskedLM, Seq2Seq, SequenceClassification, TokenClassification)
}
# what the apps hand every task; the task config holds the rest (the task's options and aux_loss_weight)
COMMON_ARGS = ("model", "tokenizer", "label_names", "optimizer", "scheduler", "data")


def task_class(name: Any) -> type[Task]:
    """The task class registered as ``name``, or a ConfigError listing the tasks."""
    if name not in TASKS:
        raise ConfigError.at(
            "task.name", f"unknown task {name!r}{suggest(str(name), TASKS)}; tasks are {', '.join(TASKS)}"
        )
    return TASKS[name]


def build_task(task_cfg: Mapping[str, Any], **common: Any) -> Task:
    """Build the task a plain task config names (``{name: causal_lm, <options>}``).

    Args:
        task_cfg: the ``task`` node as plain containers: its ``name`` and the task's own options, checked
            strictly (an unknown option is a ConfigError that lists the task's options).
        **common: ``model``, ``tokenizer``, ``label_names``, ``optimizer``, ``scheduler``, ``data`` (plain).
    """
    options = dict(task_cfg)
    cls = task_class(options.pop("name", None))
    cls.check_topology(common["model"].get("topology"))
    check_keys(options, task_options(cls), "task")
    return cls(**options, **common)


def task_options(cls: type[Task]) -> list[str]:
    """The options a task config may set: the task's own and the shared ``aux_loss_weight``."""
    return list(dict.fromkeys(p for k in (cls, Task) for p in keyword_params(k.__init__) if p not in COMMON_ARGS))


__all__ = [
    "DATA_MODULES",
    "FORMAT",
    "TASKS",
    "CausalLM",
    "MaskedLM",
    "Seq2Seq",
    "SequenceClassification",
    "StepOutput",
    "Task",
    "TokenClassification",
    "build_task",
    "check_checkpoint",
    "check_resumable",
    "data_module_class",
    "load_checkpoint",
    "load_task",
    "task_class",
    "task_options",
    "stored_locations",
    "trust_options",
]
