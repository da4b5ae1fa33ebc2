"""The Hugging Face export round trip as a check (see :mod:`tfgraph.interop`).

Where a Hugging Face architecture expresses the composed model exactly, the model is exported with
:func:`tfgraph.to_hf` and imported again with :func:`tfgraph.from_hf`; the check passes when the imported model
computes what the model does. A model no architecture expresses is skipped with the closest one's first problem;
one whose blocks do not all map (a block without ``hf_layout``, a piece with no place) fails with what did not map.
"""

from __future__ import annotations

import tempfile

import torch

from tfgraph.checks.base import Outcome, Skip, Subject, call, first_divergence, max_diff, register_check, traced
from tfgraph.registry import ConfigError


@register_check(
    "hf_export", "exported to the Hugging Face architecture that expresses it and imported again, it computes the same"
)
@torch.no_grad()
def hf_export(subject: Subject) -> Outcome:
    """``from_hf(to_hf(model))`` against the model on the same inputs; blames the first node whose output parts."""
    from tfgraph.interop import family_for, from_hf, to_hf

    model, cfg = subject.model, subject.model_cfg
    if cfg is None:
        raise Skip("the model was built by hand (no model config to export)")
    try:
        family = family_for(cfg)
    except ConfigError as err:
        path, message = err.problems[0]
        raise Skip(f"no Hugging Face architecture expresses it ({path}: {message})") from None
    with tempfile.TemporaryDirectory() as directory:
        try:
            to_hf(model, cfg, directory, family=family.model_type)
        except ConfigError as err:
            first = err.problems[0][1]
            return Outcome(passed=False, figure=f"as {family.architecture}: not exported: {first}", detail=str(err))
        imported, _ = from_hf(directory)
    ids = subject.tokens(subject.batch, subject.seq_len, seed=7)
    worst = max_diff(call(imported, ids), call(model, ids))
    figure = f"as {family.architecture}: max |diff| after export and import {worst:.2g}"
    if worst <= subject.atol:
        return Outcome(passed=True, figure=figure, value=worst)
    with traced(model) as a:
        call(model, ids)
    with traced(imported) as b:
        call(imported, ids)
    return Outcome(passed=False, figure=figure, value=worst, blame=first_divergence(model, a, b, atol=subject.atol))
