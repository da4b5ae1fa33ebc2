"""The model summary a run prints when training starts: Lightning's table of modules and parameters, with
tfgraph's forward FLOPs per token (:mod:`tfgraph.flops`) in place of Lightning's FLOPs.

Lightning counts FLOPs only over a module's ``example_input_array``, which a tfgraph task has none of, so its
summary shows a column of zeros and ``Total FLOPs: 0``. :class:`ModelSummary` (a plain table in the run's log)
and :class:`RichModelSummary` (a Rich table on the console) count them as ``tfgraph-show`` does, per module, on
the ``meta`` device. :func:`tfgraph.trainer.build_trainer` adds :class:`ModelSummary` where the config has no
summary of its own, so that every run shows one summary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning import callbacks
from pytorch_lightning.utilities.model_summary import get_formatted_model_size, get_human_readable_count

from tfgraph.flops import count_flops, meta_model
from tfgraph.models import Transformer

log = logging.getLogger(__name__)

FLOPS_COLUMN = "FLOPs/token"


@dataclass
class Summary:
    """A model summary's table (columns of strings, by header) and its totals (label and value, in order)."""

    columns: list[tuple[str, list[str]]]
    totals: list[tuple[str, str]]


class ModelSummary(callbacks.ModelSummary):
    """Lightning's model summary (modules to ``max_depth``, their parameters and mode) with tfgraph's forward
    FLOPs per token per module, logged as a plain table when training starts.

    Args:
        max_depth: the depth of nested modules shown (0: no summary).
    """

    def __init__(self, *, max_depth: int = 1) -> None:
        super().__init__(max_depth=max_depth)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._max_depth or not trainer.is_global_zero:
            return
        self.show(summarize(self._summary(trainer, pl_module), pl_module))

    def show(self, summary: Summary) -> None:
        """Log ``summary`` as a plain-text table."""
        log.info("\n%s", plain_table(summary))


class RichModelSummary(ModelSummary):
    """:class:`ModelSummary` as a Rich table on the console (Lightning's ``RichModelSummary`` layout).

    Args:
        max_depth: the depth of nested modules shown (0: no summary).
    """

    def show(self, summary: Summary) -> None:
        """Print ``summary`` as a Rich table."""
        from rich import get_console
        from rich.table import Table

        table = Table(header_style="bold magenta")
        for i, (header, _) in enumerate(summary.columns):
            numeric = header in ("Params", "Params per Device", FLOPS_COLUMN)
            table.add_column(header, justify="right" if numeric else "left", style="dim" if i == 0 else None)
        for row in zip(*(values for _, values in summary.columns), strict=True):
            table.add_row(*row)
        grid = Table.grid(expand=True)
        grid.add_column()
        for label, value in summary.totals:
            grid.add_row(f"[bold]{label}[/]: {value}")
        console = get_console()
        console.print(table)
        console.print(grid)


def summarize(lightning_summary: Any, pl_module: pl.LightningModule) -> Summary:
    """Lightning's summary of ``pl_module`` with its FLOPs column and total replaced by tfgraph's count for the
    task's model (``n/a`` where tfgraph cannot count them; none for a module that is not a tfgraph task)."""
    columns = [(h, v) for h, v in lightning_summary._get_summary_data() if h != "FLOPs"]
    trainable, total = lightning_summary.trainable_parameters, lightning_summary.total_parameters
    totals = [
        ("Trainable params", f"{trainable:,}"),
        ("Non-trainable params", f"{total - trainable:,}"),
        ("Total params", f"{total:,}"),
        ("Total estimated model params size (MB)", get_formatted_model_size(lightning_summary.model_size)),
    ]
    model = getattr(pl_module, "model", None)
    model_cfg = getattr(pl_module, "hparams", {}).get("model")
    if not isinstance(model, Transformer) or model_cfg is None:
        return Summary(columns, totals)
    flops = count_flops(meta_model(model_cfg), model_cfg)
    prefix = next(name for name, module in pl_module.named_modules() if module is model)
    per_module = []
    for name in dict(columns)["Name"]:
        inside = name == prefix or name.startswith(prefix + ".")
        count = flops.per_token(name[len(prefix) + 1 :]) if inside else None
        per_module.append("-" if not inside else "n/a" if count is None else get_human_readable_count(int(count)))
    columns.insert(next(i for i, (h, _) in enumerate(columns) if h == "Params") + 1, (FLOPS_COLUMN, per_module))
    whole = flops.per_token("")
    counted = "n/a" if whole is None else f"{whole:,.0f} (at sequence length {flops.seq_len})"
    totals.append(("Forward FLOPs per token", counted if flops.unavailable is None else f"n/a: {flops.unavailable}"))
    return Summary(columns, totals)


def plain_table(summary: Summary) -> str:
    """``summary`` as lines of text: the columns padded to their widest entry, then one line per total."""
    widths = [max(len(header), *(len(v) for v in values)) for header, values in summary.columns]
    lines = [" | ".join(h.ljust(w) for (h, _), w in zip(summary.columns, widths, strict=True))]
    rule = "-" * len(lines[0])
    lines.append(rule)
    for row in zip(*(values for _, values in summary.columns), strict=True):
        lines.append(" | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    lines.append(rule)
    lines += [f"{label}: {value}" for label, value in summary.totals]
    return "\n".join(lines)
