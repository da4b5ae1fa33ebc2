"""Faster decoding on CPU: matrix-vector products on all threads.

A one-token decode step multiplies one vector by every weight matrix of the model, so it is bound by how fast the
weights stream from memory. PyTorch's CPU ``F.linear`` for a single row (MKL's matrix-vector product) runs on one
thread for these shapes, however many ``torch.get_num_threads()`` allows; oneDNN's inner product, which PyTorch ships
for its compiler (``torch.ops.mkldnn._linear_pointwise``), splits the matrix over the threads. On the 2-core machine of
``experiments/benchmarks/generate_vs_hf.py`` the 49 matrix-vector products of a GPT-2 small step take about 20 ms
that way instead of about 35 ms, and generation runs about 1.6x as fast (``experiments/README.md``).

:func:`onednn_linear` routes ``F.linear`` through oneDNN within a ``with`` block; :func:`tfgraph.decoding.generate`
uses it on its own for float32 models on CPU.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode


@functools.cache
def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's linear kernel and it computes ``F.linear`` on this CPU.

    The kernel is a private op (``torch.ops.mkldnn._linear_pointwise``): it may be missing from other PyTorch versions
    or builds, or fail on other CPUs. It is tried once on a small input; any exception or a wrong result means no.
    """
    try:
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
            return False
        x = torch.linspace(-1.0, 1.0, 24).reshape(3, 8)
        weight, bias = torch.linspace(-0.5, 0.5, 40).reshape(5, 8), torch.linspace(0.0, 1.0, 5)
        with torch.no_grad():
            got = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
            return bool(torch.allclose(got, F.linear(x, weight, bias), rtol=1e-4, atol=1e-5))
    except Exception:  # whatever a build or CPU raises, the answer is: use PyTorch's own kernel
        return False


class OneDNNLinear(TorchFunctionMode):
    """Within the ``with`` block, ``F.linear`` of float32 CPU tensors without autograd runs on oneDNN's kernel.

    Any other call (another dtype or device, gradients wanted) runs as usual, and so does every call after the kernel
    raised once. Results differ from PyTorch's own kernel by float rounding only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (PyTorch's protocol)
        kwargs = kwargs or {}
        if func is F.linear and not self.failed:
            x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if _fits(x, weight, bias):
                try:
                    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
                except Exception:  # a shape or CPU the kernel does not take: PyTorch's own from now on
                    self.failed = True
        return func(*args, **kwargs)


def _fits(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        not torch.is_grad_enabled()
        and all(
            type(t) in (torch.Tensor, nn.Parameter) and t.device.type == "cpu" and t.dtype == torch.float32
            for t in tensors
        )
        and not any(t.is_mkldnn or t.is_sparse for t in tensors)
        and weight.dim() == 2
        and x.dim() >= 2
    )


def onednn_linear(enabled: bool = True) -> AbstractContextManager:
    """A context in which float32 CPU ``F.linear`` without autograd runs on oneDNN (PyTorch's own kernel where
    :func:`onednn_available` says no)."""
    return OneDNNLinear() if enabled and onednn_available() else nullcontext()
