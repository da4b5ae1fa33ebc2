"""Equivalence checks of any composed model: what the test suite proves for every preset, for a user's own
layer graph, plugin block or per-layer pattern (``tfgraph-check``, :func:`check`).

=============  ========================================================================================
check          proves
=============  ========================================================================================
forward        the call returns ``[B, T, vocab]`` (``d_model`` for encoder_only), every value finite
causality      a change at position t leaves every output before t unchanged (causal stacks)
padding_right  right padding leaves each row's real positions as the row alone computes them
padding_left   the same for left padding, positions per row (decoder_only: its call takes position_ids)
cache          greedy generation with the KV cache: the tokens and per-step logits of generation without
backends       every attention kernel (``sdpa``, ``flex``) gives the ``math`` reference's output, padded
compile        ``torch.compile(fullgraph=True)``: zero graph breaks, the output eager computes
state_dict     the state dict through ``torch.save`` / ``torch.load(weights_only=True)``: the same model
gradients      every trainable parameter gets a finite, non-zero gradient from the task's training loss
determinism    a forward with dropout off gives exactly the same output twice
counts         parameters and FLOPs per token as ``tfgraph-show`` prints them; meta count == built model's
hf_export      exported to the Hugging Face architecture that expresses it and imported again, the same output
=============  ========================================================================================

A check is a function ``(Subject) -> Outcome`` registered with :func:`register_check`; the modules of
:data:`CHECK_MODULES` register them on import, in the order they run. A failing check names the layer-graph
node it can blame, with its config path; one that cannot apply is skipped with the reason.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from tfgraph.checks.base import (
    CHECKS,
    Check,
    CheckReport,
    CheckResult,
    ChecksFailed,
    Finding,
    Outcome,
    Skip,
    Subject,
    register_check,
    run_checks,
)
from tfgraph.config import plain
from tfgraph.registry import ConfigError, Problems, load_plugins, suggest

# The modules whose import registers checks, in the order their checks run: the equivalence checks, then the
# Hugging Face export round trip (over tfgraph.interop). A module of checks of its own joins this list.
CHECK_MODULES = ("tfgraph.checks.equivalence", "tfgraph.checks.hf_export")

SMALL = {"head_size": 16, "n_heads": 4, "n_layers": 2, "vocab_size": 512, "max_len": 64, "seq_len": 12}
SIZE_OPTIONS = ("d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "n_layers", "n_decoder_layers",
                "vocab_size", "max_len")  # fmt: skip
RUN_OPTIONS = {  # option -> (default, what it must be)
    "seq_len": (None, "a positive integer or null"),
    "batch": (2, "an integer of at least 2"),
    "atol": (1e-5, "a positive number"),
    "compile_atol": (1e-4, "a positive number"),
    "compile_backend": ("inductor", "a torch.compile backend name (inductor, aot_eager, eager)"),
    "new_tokens": (8, "a positive integer"),
    "only": ([], "a list of check names"),
    "skip": ([], "a list of check names"),
    "json": (None, "a file path or null"),
}


def _load_checks() -> None:
    for module in CHECK_MODULES:
        importlib.import_module(module)


_load_checks()


def check(cfg: DictConfig | Mapping[str, Any]) -> CheckReport:
    """Run the equivalence checks on the model of a composed ``check`` config, built at a small size.

    Args:
        cfg: the composed ``check`` config (``tfgraph.compose([...], config_name="check")``): ``model``, the
            optional ``task`` whose loss the gradient check uses, ``plugins``, ``seed`` and the ``check`` options (the
            small sizes ``check.d_model``, ``check.n_layers``, ... null: derived from the model config; the run's
            ``check.seq_len``, ``check.atol``, ``check.only``, ``check.skip``, ``check.json``, ...).

    Returns:
        The :class:`CheckReport` (``str()`` is the table; ``.ok`` is False when a check failed). With
        ``check.json`` set it is also written there as JSON.

    Raises:
        tfgraph.ConfigError: for a config mistake (the model's or the check options').
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    load_plugins(cfg.get("plugins"), "plugins")
    options = check_options(cfg)
    names = selected(options)
    full_cfg = plain(cfg.model)
    from tfgraph.flops import meta_model

    meta_model(full_cfg)  # the config as given is checked first, its errors named at their own paths
    small = small_config(full_cfg, options)
    task_cfg = plain(cfg.task) if cfg.get("task") is not None else None
    if task_cfg is not None:  # a task that does not fit the topology is the config's mistake, not a failed check
        from tfgraph.tasks import task_class

        task_class(task_cfg.get("name")).check_topology(full_cfg.get("topology"))
    torch.manual_seed(options["seed"])
    try:
        from tfgraph.models import build_model

        model = build_model(small)
    except ConfigError as err:
        sizes = ", ".join(f"check.{k}={small.get(k)}" for k in SIZE_OPTIONS if small.get(k) is not None)
        raise ConfigError([(path, f"{message} (at the check's small size: {sizes})") for path, message in
                           err.problems]) from None  # fmt: skip
    subject = Subject(
        model=model,
        model_cfg=small,
        full_cfg=full_cfg,
        task_cfg=task_cfg,
        seq_len=options["seq_len"] or min(small["max_len"], SMALL["seq_len"]),
        batch=options["batch"],
        seed=options["seed"],
        atol=options["atol"],
        compile_atol=options["compile_atol"],
        compile_backend=options["compile_backend"],
        new_tokens=options["new_tokens"],
    )
    report = CheckReport(run_checks(subject, names), describe(full_cfg, small, subject.seq_len))
    if options["json"] is not None:
        Path(options["json"]).write_text(report.to_json() + "\n", encoding="utf-8")
    return report


def describe(full_cfg: Mapping[str, Any], small: Mapping[str, Any], seq_len: int) -> str:
    """One line: what was checked, at which small size."""

    def count(n: int, what: str) -> str:
        return f"{n} {what}{'s' * (n != 1)}"

    layers = count(small["n_layers"], "layer")
    if small.get("n_decoder_layers") is not None:
        layers += f" + {count(small['n_decoder_layers'], 'decoder layer')}"
    kv = f" ({small['n_kv_heads']} key/value)" if small.get("n_kv_heads") not in (None, small["n_heads"]) else ""
    return (
        f"checked: {full_cfg.get('topology')} at d_model {small['d_model']}, {small['n_heads']} heads{kv}, "
        f"d_ff {small['d_ff']}, {layers}, vocab {small['vocab_size']}, max_len {small['max_len']}; seq_len {seq_len}"
    )


# ------------------------------------------------------------------------------------------------ options


def check_options(cfg: DictConfig) -> dict[str, Any]:
    """The ``check`` options with their defaults and the run's ``seed``, each checked (all problems together, at
    ``check.<key>``)."""
    node = cfg.get("check")
    values = plain(node) if node is not None else {}
    if not isinstance(values, dict):
        raise ConfigError.at("check", f"expected a mapping of check options, got {values!r}")
    known = (*SIZE_OPTIONS, *RUN_OPTIONS)
    problems = Problems()
    for key in values:
        if key not in known:
            problems.add(f"check.{key}", f"unknown option{suggest(key, known)}; options are {', '.join(known)}")
    options = {key: values.get(key, default) for key, (default, _) in RUN_OPTIONS.items()}
    for key in SIZE_OPTIONS:
        options[key] = values.get(key)
        value = options[key]
        if value is not None and not _positive_int(value):
            problems.add(f"check.{key}", f"expected a positive integer or null (derived from the model), got {value!r}")
    for key, (_, expected) in RUN_OPTIONS.items():
        if not _valid(key, options[key]):
            problems.add(f"check.{key}", f"expected {expected}, got {options[key]!r}")
    out = options["json"]
    if isinstance(out, str) and not Path(out).resolve().parent.is_dir():
        problems.add("check.json", f"cannot write {out}: no folder {Path(out).resolve().parent}")
    seed = cfg.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.add("seed", f"expected an integer, got {seed!r}")
    options["seed"] = seed
    for key in ("only", "skip"):
        if isinstance(options[key], list):
            for i, name in enumerate(options[key]):
                if name not in CHECKS:
                    problems.add(f"check.{key}[{i}]", f"no check named {name!r}{suggest(str(name), CHECKS)}; "
                                 f"checks are {', '.join(CHECKS)}")  # fmt: skip
    problems.raise_if_any()
    return options


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _valid(key: str, value: Any) -> bool:
    if key == "seq_len":
        return value is None or _positive_int(value)
    if key == "batch":
        return _positive_int(value) and value >= 2
    if key in ("atol", "compile_atol"):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if key == "compile_backend":
        return isinstance(value, str) and bool(value)
    if key == "new_tokens":
        return _positive_int(value)
    if key in ("only", "skip"):
        return isinstance(value, list)
    return value is None or isinstance(value, str)  # json


def selected(options: Mapping[str, Any]) -> list[str]:
    """The checks to run, in order: ``check.only`` (all when empty) less ``check.skip``."""
    only, skip = options["only"], set(options["skip"])
    return [name for name in CHECKS if (not only or name in only) and name not in skip]


# ------------------------------------------------------------------------------------------------ small size


def small_config(model_cfg: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The model config at the checks' small size: each size an option sets (``check.d_model``, ...), the
    others derived from the config.

    Heads: at most 4, each at most 16 wide (``d_model = n_heads * head size``); grouped key/value heads keep
    their ratio; ``d_ff`` keeps its ratio to ``d_model``; layers: at most 2, or one period of a per-layer
    pattern if that is longer; vocabulary at most 512; positions at most 64. Everything else stays.
    """
    options = dict(options or {})
    cfg = dict(model_cfg)
    d_model, n_heads = int(cfg["d_model"]), int(cfg["n_heads"])
    n_kv = cfg.get("n_kv_heads")
    head_dim = cfg.get("head_dim")

    heads = options.get("n_heads") or min(n_heads, SMALL["n_heads"])
    width = options.get("d_model") or heads * min(max(1, d_model // n_heads), SMALL["head_size"])
    if options.get("n_kv_heads"):
        kv = options["n_kv_heads"]
    elif n_kv is None:
        kv = None
    else:
        kv = math.gcd(heads, max(1, heads * int(n_kv) // n_heads))
    small = {
        "d_model": width,
        "n_heads": heads,
        "n_kv_heads": kv,
        "head_dim": options.get("head_dim") or (None if head_dim is None else min(int(head_dim), SMALL["head_size"])),
        "d_ff": options.get("d_ff") or max(1, round(int(cfg["d_ff"]) * width / d_model)),
        "vocab_size": options.get("vocab_size") or min(int(cfg["vocab_size"]), SMALL["vocab_size"]),
        "max_len": options.get("max_len") or min(int(cfg["max_len"]), SMALL["max_len"]),
    }
    pattern = cfg.get("pattern") or []
    layers = max(SMALL["n_layers"], len(pattern))
    small["n_layers"] = options.get("n_layers") or min(int(cfg["n_layers"]), layers)
    if cfg.get("n_decoder_layers") is not None or options.get("n_decoder_layers"):
        full = cfg.get("n_decoder_layers") or cfg["n_layers"]
        small["n_decoder_layers"] = options.get("n_decoder_layers") or min(int(full), layers)
    cfg.update(small)
    return cfg


__all__ = [
    "CHECKS",
    "CHECK_MODULES",
    "Check",
    "CheckReport",
    "CheckResult",
    "ChecksFailed",
    "Finding",
    "Outcome",
    "Skip",
    "Subject",
    "check",
    "check_options",
    "register_check",
    "run_checks",
    "selected",
    "small_config",
]
