"""Optimizers and learning-rate schedules from plain config dicts (``optimizer: {name: adamw, lr: ...}``).

Checked strictly like blocks: an unknown name or key is a :class:`~tfgraph.ConfigError` naming its config path.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from tfgraph.registry import ConfigError, suggest

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}


def constant_schedule(step: int, *, total_steps: int, warmup_steps: int = 0) -> float:
    """Linear warmup to the peak learning rate, then constant."""
    return min(1.0, (step + 1) / (warmup_steps + 1))


def linear_schedule(step: int, *, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> float:
    """Linear warmup, then linear decay to ``min_lr_ratio`` times the peak at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)


def cosine_schedule(step: int, *, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` times the peak at ``total_steps`` (nanoGPT's)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES: dict[str, Callable[..., float]] = {
    "cosine": cosine_schedule,
    "linear": linear_schedule,
    "constant": constant_schedule,
}


def keyword_params(fn: Callable[..., Any]) -> list[str]:
    """The parameters of a function or class that a config may set by keyword."""
    return [
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name not in ("self", "step", "params")
    ]


def check_keys(given: Mapping[str, Any], allowed: Iterable[str], path: str) -> None:
    """Raise one ConfigError naming every key of ``given`` not in ``allowed`` (with close matches)."""
    allowed = list(allowed)
    problems = [
        (f"{path}.{key}", f"unknown option{suggest(key, allowed)}; options are {', '.join(allowed) or 'none'}")
        for key in given
        if key not in allowed
    ]
    if problems:
        raise ConfigError(problems)


def _named(table: Mapping[str, Any], cfg: Mapping[str, Any], path: str) -> tuple[Any, dict[str, Any]]:
    options = dict(cfg)
    name = options.pop("name", None)
    if name not in table:
        raise ConfigError.at(
            f"{path}.name", f"unknown {path} {name!r}{suggest(str(name), table)}; choose one of {', '.join(table)}"
        )
    return table[name], options


def check_optimizer(cfg: Mapping[str, Any], device: torch.device | str | None = None) -> None:
    """Check an optimizer config, its values too (``lr=-1``), on one throwaway parameter: the model's are not
    needed, and PyTorch's own checks decide what is valid.

    Args:
        cfg: ``{name: ..., <options>}``.
        device: where the run trains; given, the throwaway parameter also takes one step there, which refuses
            what only a step does (``capturable=true`` off a GPU, ``differentiable=true`` on a parameter).
    """
    cls, options = _named(OPTIMIZERS, cfg, "optimizer")
    check_keys(options, keyword_params(cls), "optimizer")
    on = "" if device is None else f" on {torch.device(device).type}"

    def refusal(**given: Any) -> str | None:
        try:
            param = torch.zeros(1, requires_grad=True, device=device)
            optimizer = cls([param], **given)
            if device is not None:
                param.grad = torch.zeros_like(param)
                optimizer.step()
        # betas=[0.9]: an IndexError; capturable=true on a CPU: an AssertionError from the step
        except (ValueError, TypeError, RuntimeError, IndexError, KeyError, AssertionError) as err:
            return str(err) or type(err).__name__
        return None

    together = refusal(**options)
    if together is None:
        return
    problems = [  # each value the optimizer refuses even alone, so that each is named
        (f"optimizer.{key}", f"{value!r} is refused by {cls.__name__}{on}: {why}")
        for key, value in options.items()
        if (why := refusal(**{key: value})) is not None
    ]
    raise ConfigError(problems or [("optimizer", f"{cls.__name__} refuses these settings together{on}: {together}")])


def states_per_parameter(cfg: Mapping[str, Any] | None) -> int:
    """How many tensors of a parameter's size the optimizer of ``cfg`` keeps: Adam's two moments (three with
    ``amsgrad``), SGD's momentum buffer (none without momentum)."""
    cfg = cfg or {"name": "adamw"}
    if cfg.get("name") == "sgd":
        return 1 if cfg.get("momentum") else 0
    return 3 if cfg.get("amsgrad") else 2


def check_scheduler(cfg: Mapping[str, Any]) -> None:
    """Check a scheduler config without building anything."""
    fn, options = _named(SCHEDULES, cfg, "scheduler")
    check_keys(options, [p for p in keyword_params(fn) if p != "total_steps"], "scheduler")
    problems = []
    warmup = options.get("warmup_steps", 0)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        problems.append(("scheduler.warmup_steps", f"expected a whole number of steps >= 0, got {warmup!r}"))
    ratio = options.get("min_lr_ratio", 0.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        problems.append(("scheduler.min_lr_ratio", f"expected a fraction of the peak lr in [0, 1], got {ratio!r}"))
    if problems:
        raise ConfigError(problems)


# what wrappers put into parameter names: FSDP's units, torch's activation checkpointing, torch.compile
WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def unwrapped_name(name: str) -> str:
    """A parameter's name as in the unwrapped model (``model.decoder.layers.0.attn.qkv.weight``)."""
    for segment in WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def decay_plan(module: nn.Module) -> dict[str, bool]:
    """Whether each parameter of ``module`` gets weight decay, by name: matrices and tables (two or more
    dimensions: linear and embedding weights) do, biases, norm gains and scalars do not.

    Decide it before a strategy wraps the model: FSDP (``use_orig_params=True``) hands the optimizer 1-D shards,
    whose shapes no longer say which is a matrix. Every alias of a shared tensor is named.
    """
    return {unwrapped_name(n): p.dim() >= 2 for n, p in module.named_parameters(remove_duplicate=False)}


def build_optimizer(
    module: nn.Module, cfg: Mapping[str, Any], *, plan: Mapping[str, bool] | None = None
) -> torch.optim.Optimizer:
    """The optimizer a config names, with weight decay on matrices only (not on biases, norms or gains).

    Args:
        module: whose trainable parameters are optimised (each shared tensor once), possibly wrapped.
        cfg: ``{name: adamw | adam | sgd, lr: ..., weight_decay: ..., <the optimizer's own options>}``.
        plan: which parameters decay, by unwrapped name (:func:`decay_plan` of the module before it was wrapped);
            ``None``: decided from ``module`` as it is now.

    Raises:
        tfgraph.ConfigError: for an optimizer config refused, by a step on the parameters' device too.
        RuntimeError: when ``module`` has a parameter that ``plan`` does not name.
    """
    params = [(unwrapped_name(n), p) for n, p in module.named_parameters() if p.requires_grad]
    device = params[0][1].device if params else None
    check_optimizer(cfg, device=None if device is None or device.type == "meta" else device)
    cls, options = _named(OPTIMIZERS, cfg, "optimizer")
    weight_decay = options.pop("weight_decay", 0.0)
    plan = decay_plan(module) if plan is None else plan
    unplanned = [name for name, _ in params if name not in plan]
    if unplanned:
        raise RuntimeError(
            f"no weight-decay decision for parameter(s) {', '.join(unplanned[:5])}: the plan was made before "
            "these existed (tfgraph.tasks.optim.decay_plan of the unwrapped model names every parameter)"
        )
    groups = [
        {"params": [p for name, p in params if plan[name]], "weight_decay": weight_decay},
        {"params": [p for name, p in params if not plan[name]], "weight_decay": 0.0},
    ]
    return cls([g for g in groups if g["params"]], **options)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], total_steps: int) -> LambdaLR:
    """A per-step schedule: the learning rate is the optimizer's ``lr`` times the schedule's factor.

    Args:
        optimizer: the optimizer to schedule.
        cfg: ``{name: cosine | linear | constant, warmup_steps: ..., min_lr_ratio: ...}``.
        total_steps: optimizer steps of the whole run (the end of the decay).
    """
    check_scheduler(cfg)
    fn, options = _named(SCHEDULES, cfg, "scheduler")
    return LambdaLR(optimizer, partial(fn, total_steps=total_steps, **options))
