"""Hugging Face checkpoints in and out: :func:`from_hf`, :func:`to_hf`, and :func:`load_weights` for ``init_from``.

An HF model directory is data (see :mod:`tfgraph.interop.files`): its ``config.json`` maps, through the family of
its ``model_type`` (:mod:`tfgraph.interop.families`), to a normal tfgraph model config made of registered blocks,
and its tensors map onto that model through the blocks' own layouts (:mod:`tfgraph.interop.mapping`). Nothing needs
``transformers`` installed.

    model, model_cfg = tfgraph.from_hf("path/to/llama")      # a tfgraph model and its config (a plain dict)
    tfgraph.to_hf(model, model_cfg, "exported/")            # config.json + model.safetensors, for transformers
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tfgraph.interop.families import FAMILIES, Family, export_problems, hf_config, model_config
from tfgraph.interop.files import open_weights, read_config, write_directory
from tfgraph.interop.mapping import Report, export_state, import_state, locations, matching
from tfgraph.registry import ConfigError

__all__ = [
    "FAMILIES",
    "export_problems",
    "family_for",
    "from_hf",
    "init_from",
    "load_hf_weights",
    "read_model_checkpoint",
    "save_model_checkpoint",
    "to_hf",
]


def from_hf(source: str | Path | Any, *, key: str = "from_hf") -> tuple[nn.Module, dict[str, Any]]:
    """Import a Hugging Face model: a directory (``config.json`` and safetensors or ``pytorch_model.bin``), or a
    ``transformers`` model object already in memory.

    Args:
        source: the directory, or a ``PreTrainedModel``.
        key: the config key problems are reported under.

    Returns:
        ``(model, model_cfg)``: the tfgraph model (float32, eval mode) with the checkpoint's weights, and its model
        config as plain containers (``tfgraph.build_model(model_cfg)`` builds the same architecture).

    Raises:
        tfgraph.ConfigError: an architecture or setting tfgraph does not map (naming it and what is supported), or
            any missing, unexpected or mis-shaped tensor.
    """
    from tfgraph.models import build_model

    with hf_source(source, key) as (config, weights, where):
        family = family_of(config, key)
        model_cfg = model_config(family, config, key=key)
        model = build_model(model_cfg)
        load_into(model, family, weights, key=key, where=where)
    return model.eval(), model_cfg


def to_hf(
    model: nn.Module,
    model_cfg: Mapping[str, Any] | None,
    out_dir: str | Path,
    *,
    family: str | None = None,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Export a tfgraph model as a Hugging Face model directory that ``transformers`` loads.

    Args:
        model: the tfgraph model.
        model_cfg: its model config (``None``: the config the model was built from, ``model.config``).
        out_dir: the directory to write ``config.json`` and ``model.safetensors`` (sharded with an index above
            ``max_shard_bytes``, default 5 GB) into.
        family: the HF ``model_type`` to export as (default: the first of :data:`FAMILIES` that expresses the config
            exactly).
        dtype: cast the weights to this dtype (default: as they are).

    Raises:
        tfgraph.ConfigError: naming each config path the architecture cannot express, or each tensor without a
            place in the checkpoint.
    """
    from tfgraph.spec import to_container

    cfg = to_container(model_cfg if model_cfg is not None else _stored_config(model))
    chosen = family_for(cfg, family)
    report = Report()
    tensors = export_state(locations(model, chosen.outer, chosen.stacks, report), report)
    report.raise_if_any("to_hf", f"{chosen.architecture}")
    if not chosen.export_prefix and chosen.prefix:
        tensors = {name.removeprefix(chosen.prefix + "."): t for name, t in tensors.items()}
    if dtype is not None:
        tensors = {name: t.to(dtype) for name, t in tensors.items()}
    stored = next(iter(tensors.values())).dtype if tensors else torch.float32
    config = {**hf_config(chosen, cfg), "torch_dtype": str(stored).removeprefix("torch.")}
    out = Path(out_dir)
    write_directory(out, config, tensors, max_shard_bytes=max_shard_bytes)
    return out


def _stored_config(model: nn.Module) -> Mapping[str, Any]:
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, Mapping):
        raise ConfigError.at("to_hf", "the model carries no config (built by hand): pass its model config")
    return cfg


def family_for(cfg: Mapping[str, Any], name: str | None = None) -> Family:
    """The family that expresses the tfgraph model config exactly: ``name``'s, or the first that does."""
    if name is not None:
        if name not in FAMILIES:
            raise ConfigError.at(
                "family", f"unknown Hugging Face model_type {name!r}; supported: {', '.join(FAMILIES)}"
            )
        problems = export_problems(FAMILIES[name], cfg)
        if problems:
            raise ConfigError(problems)
        return FAMILIES[name]
    tried = []
    for family in FAMILIES.values():
        if family.topology != cfg.get("topology"):
            continue
        problems = export_problems(family, cfg)
        if not problems:
            return family
        tried.append((len(problems), family, problems))
    if not tried:
        raise ConfigError.at("model.topology", f"no Hugging Face architecture tfgraph maps is {cfg.get('topology')}")
    _, closest, problems = min(tried, key=lambda t: t[0])
    others = ", ".join(f.model_type for _, f, _ in tried if f is not closest)
    note = f" (also tried: {others})" if others else ""
    raise ConfigError(
        [(path, f"{closest.model_type}: {message}") for path, message in problems]
        + [("model", f"no Hugging Face architecture expresses this model exactly; closest: {closest.model_type}{note}")]
    )


def family_of(config: Mapping[str, Any], key: str) -> Family:
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ConfigError.at(
            key,
            f"config.json model_type {model_type!r} is not an architecture tfgraph maps; supported: "
            f"{', '.join(FAMILIES)}",
        )
    return FAMILIES[model_type]


@contextmanager
def hf_source(source: Any, key: str) -> Iterator[tuple[dict[str, Any], tuple[set[str], Any, Any], str]]:
    """``(config, (keys, read, shape), where)`` of a model directory or a ``transformers`` model object (see
    :func:`~tfgraph.interop.files.open_weights`)."""
    if isinstance(source, (str, Path)):
        directory = Path(source)
        config = read_config(directory, key)
        with open_weights(directory, key) as weights:
            yield config, weights, str(directory)
        return
    if hasattr(source, "config") and hasattr(source.config, "to_dict") and hasattr(source, "state_dict"):
        state = {name: t.detach() for name, t in source.state_dict().items()}
        weights = (set(state), state.__getitem__, lambda name: tuple(state[name].shape))
        yield source.config.to_dict(), weights, type(source).__name__
        return
    raise ConfigError.at(key, f"expected a Hugging Face model directory or model, got {type(source).__name__}")


def load_into(model: nn.Module, family: Family, weights: tuple[set[str], Any, Any], *, key: str, where: str) -> None:
    """Copy a checkpoint's tensors into ``model`` through ``family``'s mapping.

    A first pass maps the tensors' shapes only (``meta`` tensors: nothing is read), so that every missing, unexpected
    and mis-shaped tensor is reported together before any weight changes; the second reads each tensor and copies it
    into its parameter at once, so that the weights are never in memory twice.
    """
    keys, read, shape = weights
    names = _checkpoint_names(family, keys)
    ignored = set(family.ignored)
    if getattr(model, "tie_embeddings", False):
        ignored.add("lm_head\\.weight")
    report = Report()
    wanted = set(names) - matching(tuple(ignored), set(names))
    where_ = locations(model, family.outer, family.stacks, report)
    import_state(model, where_, wanted, lambda n: torch.empty(shape(names[n]), device="meta"), report)
    report.raise_if_any(key, f"{where} ({family.architecture}) into the tfgraph model")
    with torch.no_grad():
        import_state(
            model, where_, wanted, lambda n: read(names[n]), Report(),
            sink=lambda name, value: model.get_parameter(name).copy_(value),
        )  # fmt: skip


def _checkpoint_names(family: Family, keys: set[str]) -> dict[str, str]:
    """The checkpoint's keys as the family names them (renamed, the base model's prefix added) -> the stored key."""
    import re

    names = {}
    has_prefix = not family.prefix or any(k.startswith(family.prefix + ".") for k in keys)
    for stored in keys:
        name = stored
        for old, new in family.renames.items():
            name = re.sub(f"^{old}$", new, name)
        if not has_prefix:
            name = f"{family.prefix}.{name}"
        names[name] = stored
    return names


def load_hf_weights(model: nn.Module, directory: str | Path, *, key: str = "init_from") -> None:
    """Load an HF model directory's weights into an already built tfgraph model (``init_from=<dir>``), through the
    family of its ``config.json``; the model's own config decides the architecture, and every tensor that does not
    fit is named."""
    with hf_source(directory, key) as (config, weights, where):
        load_into(model, family_of(config, key), weights, key=key, where=where)


# ------------------------------------------------------------------------------- tfgraph's own weight checkpoints

MODEL_CHECKPOINT = "model"  # checkpoint["tfgraph"]["kind"] of a weights-only checkpoint (tfgraph-convert writes one)


def save_model_checkpoint(model: nn.Module, model_cfg: Mapping[str, Any], path: str | Path, *, source: str) -> Path:
    """Write a weights-only tfgraph checkpoint: the model config as plain containers and the state dict, read back by
    ``torch.load(weights_only=True)`` (:func:`read_model_checkpoint`, ``init_from``); written atomically."""
    from tfgraph.interop.files import atomic

    checkpoint = {
        "tfgraph": {"kind": MODEL_CHECKPOINT, "format": 1, "source": source},
        "model": dict(model_cfg),
        "state_dict": {name: t.detach().clone() for name, t in model.state_dict().items()},
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic(target, lambda tmp: torch.save(checkpoint, tmp))


def read_model_checkpoint(path: str | Path, *, key: str) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    """``(model config, model state dict)`` of a tfgraph checkpoint: a weights-only one (``tfgraph-convert``'s) or a
    training run's (``<run dir>/checkpoints/last.ckpt``: the task's ``model.*`` tensors). Read with
    ``torch.load(weights_only=True)``; nothing in it is built or imported."""
    from tfgraph.tasks.checkpoint import read_checkpoint

    try:
        checkpoint = read_checkpoint(path)
    except ConfigError as err:
        raise ConfigError([(key, message) for _, message in err.problems]) from None
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ConfigError.at(key, f"{path} is not a tfgraph checkpoint (no state_dict)")
    state = checkpoint["state_dict"]
    info = checkpoint.get("tfgraph") if isinstance(checkpoint.get("tfgraph"), Mapping) else {}
    if info.get("kind") == MODEL_CHECKPOINT:
        cfg = checkpoint.get("model")
    else:  # a training checkpoint: the task's model
        hparams = checkpoint.get("hyper_parameters")
        cfg = hparams.get("model") if isinstance(hparams, Mapping) else None
        state = {name.removeprefix("model."): t for name, t in state.items() if name.startswith("model.")}
    if not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ConfigError.at(key, f"{path}: its state_dict holds something other than tensors")
    return (dict(cfg) if isinstance(cfg, Mapping) else None), dict(state)


def init_from(model: nn.Module, source: str | Path, *, key: str = "init_from") -> str:
    """Load weights into an already built model (``tfgraph-train init_from=...``): from a Hugging Face directory
    (through its family's mapping), a ``tfgraph-convert`` output directory, a run directory or a checkpoint file.
    Every missing, unexpected and mis-shaped tensor is named together; nothing changes unless all fit.

    Returns:
        What was loaded, for the log.
    """
    path = Path(source)
    if path.is_dir():
        if (path / "config.json").is_file():
            load_hf_weights(model, path, key=key)
            return f"the Hugging Face model in {path}"
        for inside in (path / "model.ckpt", path / "checkpoints" / "last.ckpt"):
            if inside.is_file():
                path = inside
                break
        else:
            raise ConfigError.at(
                key,
                f"{path} is a directory with neither config.json (a Hugging Face model), model.ckpt (tfgraph-convert's "
                "output) nor checkpoints/last.ckpt (a run)",
            )
    if not path.is_file():
        raise ConfigError.at(key, f"no checkpoint or model directory at {path}")
    _, state = read_model_checkpoint(path, key=key)
    ours = model.state_dict()
    report = Report(
        missing=sorted(set(ours) - set(state)),
        unexpected=sorted(set(state) - set(ours)),
        misshaped=[
            f"{name} is {list(ours[name].shape)}, the checkpoint's {list(state[name].shape)}"
            for name in sorted(set(ours) & set(state))
            if ours[name].shape != state[name].shape
        ],
    )
    report.raise_if_any(key, f"{path} into the composed model")
    model.load_state_dict(state)
    return f"the weights of {path}"
