"""Weight layout for decoding on CPU.

A one-token decode step multiplies one vector by every weight matrix of the model: it is bound by how fast the
matrices stream from memory. PyTorch's CPU matrix-vector product (MKL ``sgemv``, one thread for these shapes on the
machines we measured) reads a matrix stored ``[in, out]`` (column-major for ``nn.Linear``'s ``[out, in]`` weight)
about twice as fast as one stored ``[out, in]``; see ``experiments/README.md``. :func:`decode_layout` re-lays the
weights out that way once, in place.
"""

from __future__ import annotations

from torch import nn


def decode_layout(model: nn.Module) -> nn.Module:
    """Store the weight matrix of every ``nn.Linear`` and head column-major, in place; returns ``model``.

    Parameters stay the same objects with the same shapes and values (tied weights stay tied; ``state_dict`` and
    checkpoints are unchanged in content), only their memory order changes: ``weight.t()`` becomes contiguous, so
    ``F.linear`` multiplies by an ``[in, out]``-ordered matrix. Results differ from the standard layout by float
    rounding only (a different summation order). Training works on such a model too; it is meant for generation.
    """
    done: set[int] = set()
    for module in model.modules():
        if not (isinstance(module, nn.Linear) or getattr(type(module), "block_kind", None) == "head"):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() != 2 or id(weight) in done:
            continue
        done.add(id(weight))
        if not weight.t().is_contiguous():
            weight.data = weight.data.t().contiguous().t()
    return model
