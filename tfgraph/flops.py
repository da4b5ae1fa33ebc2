"""Counting a model before its weights exist: parameters and forward FLOPs per token, on the ``meta`` device.

``tfgraph-show`` prints these counts per node, and every training run writes them to ``run_info.json``
(:func:`model_info`), which a sweep's summary reads. FLOPs are counted by
:class:`torch.utils.flop_counter.FlopCounterMode` over one forward pass of a ``[1, T]`` batch, per module, and
divided by ``T``. The counter counts matrix multiplications (linear layers, the head and, with SDPA held to its
math backend, the attention scores and the weighted sum over the full ``T x T`` matrix); elementwise work (norms,
activations, residual adds, softmax) is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from tfgraph.models import Transformer, build_model

MAX_LEN_COUNTED = 1024  # default sequence length of the FLOP count: min(model.max_len, this)
CPU_FALLBACK_PARAMS = 50_000_000  # a model this small may be run for real when the meta device cannot count it
FLOPS_NOTE = (
    "FLOPs: matrix multiplications counted by torch.utils.flop_counter (linear layers, head, attention scores "
    "and weighted values over the full T x T matrix, nothing saved by causal or sliding-window masks); "
    "elementwise ops are not counted"
)


def meta_model(model_cfg: Any) -> Transformer:
    """The model of a model config (plain or a DictConfig) on the ``meta`` device: checked and counted, no
    memory allocated."""
    with torch.device("meta"):
        return build_model(model_cfg)


def model_info(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The model's parameters and forward FLOPs per token, counted on ``meta`` as ``tfgraph-show`` counts them
    (at sequence length ``min(model.max_len, 1024)``; ``flops_per_token`` is None where they cannot be counted)."""
    model = meta_model(model_cfg)
    flops = count_flops(model, model_cfg)
    return {
        "topology": model.topology,
        "params": model.num_parameters(),
        "flops_per_token": flops.per_token(""),
        "flops_seq_len": flops.seq_len,
        "vocab_size": model.vocab_size,
    }


@dataclass
class FlopCount:
    """Forward FLOPs per module over one ``[1, seq_len]`` batch, keyed by module name (``""``: the model).

    ``counts`` is empty and ``unavailable`` says why when the model could not be counted.
    """

    seq_len: int
    counts: dict[str, int] = field(default_factory=dict)
    device: str = "meta"
    unavailable: str | None = None
    why_not_meta: str | None = None  # why a real run was needed

    def per_token(self, module_name: str) -> float | None:
        """FLOPs per token of one module (``None`` when nothing was counted)."""
        if self.unavailable is not None:
            return None
        return self.counts.get(module_name, 0) / self.seq_len


def count_flops(model: Transformer, model_cfg: Any, seq_len: int | None = None) -> FlopCount:
    """Count forward FLOPs per module on the ``meta`` device, or on a real CPU run where meta cannot.

    Meta tensors carry no values, so a block whose work depends on them (mixture-of-experts routing) computes
    nothing there. A layer submodule with parameters that never ran reveals it; the count is then repeated on a
    freshly built CPU model with random tokens when the model has fewer than :data:`CPU_FALLBACK_PARAMS`
    parameters, and reported unavailable otherwise.

    Args:
        model: the model, usually on ``meta``.
        model_cfg: its config, to build the CPU copy from.
        seq_len: the sequence length counted; None: ``min(model.max_len, MAX_LEN_COUNTED)``.
    """
    if seq_len is None:
        seq_len = min(model.max_len, MAX_LEN_COUNTED)
    try:
        counts, idle = _count(model, seq_len)
    except Exception as err:
        reason = f"the forward pass failed on the meta device ({type(err).__name__}: {err})"
    else:
        if not idle:
            return FlopCount(seq_len, counts)
        shown = ", ".join(idle[:2]) + (f" and {len(idle) - 2} more" if len(idle) > 2 else "")
        reason = f"parts of {shown} never ran on the meta device (data-dependent routing needs real values)"
    n_params = model.num_parameters()
    if n_params >= CPU_FALLBACK_PARAMS:
        return FlopCount(
            seq_len,
            unavailable=f"{reason}; a CPU run is skipped for {n_params:,} parameters (limit {CPU_FALLBACK_PARAMS:,})",
        )
    real = build_model(model_cfg, device="cpu")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        counts, _ = _count(real, seq_len)
    return FlopCount(seq_len, counts, device="a CPU run with random tokens", why_not_meta=reason)


def _count(model: Transformer, seq_len: int) -> tuple[dict[str, int], list[str]]:
    """FLOPs per module name, and the layer nodes holding a submodule with parameters that never ran."""
    watched = {
        name: module
        for name, module in model.named_modules()
        if ".layers." in f".{name}" and next(module.parameters(recurse=False), None) is not None
    }
    called: set[str] = set()
    hooks = [
        module.register_forward_pre_hook(lambda _module, _args, name=name: called.add(name))
        for name, module in watched.items()
    ]
    device = next(model.parameters()).device
    ids = torch.randint(model.vocab_size, (1, seq_len)).to(device)
    decoder_ids = {"decoder_input_ids": ids} if model.topology == "encoder_decoder" else {}
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    try:
        # the math backend decomposes attention into matmuls the counter sees (CPU's fused kernel is not counted)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
            model(ids, **decoder_ids)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return _by_module(counter, type(model).__name__), _idle_nodes(model, watched, called)


def _by_module(counter: FlopCounterMode, root: str) -> dict[str, int]:
    """The counter's FLOPs per module name relative to the model (``""``: the whole model)."""
    counts = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            key = ""
        elif key == root or key.startswith(root + "."):
            key = key[len(root) + 1 :]
        counts[key] = sum(ops.values())
    return counts


def _idle_nodes(model: Transformer, watched: Mapping[str, Any], called: set[str]) -> list[str]:
    """``decoder.layers.0.ffn (MoE)``: the layer nodes (blocks) holding a watched submodule that never ran."""
    idle: dict[str, str] = {}
    for name in watched:
        if name not in called:
            parts = name.split(".")
            node = ".".join(parts[: parts.index("layers") + 3])
            idle.setdefault(node, type(model.get_submodule(node)).__name__)
    return [f"{node} ({cls})" for node, cls in idle.items()]
