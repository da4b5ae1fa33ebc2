"""What ``tfgraph-convert`` does, as a function of its config: import a Hugging Face directory, or export a
checkpoint to one (see ``conf/convert.yaml``)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig

from tfgraph.registry import ConfigError, Problems

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def convert(cfg: DictConfig) -> list[str]:
    """Import (``from_hf`` and ``out``) or export (``ckpt_path`` and ``to_hf``); returns the lines to print."""
    importing, exporting = cfg.get("from_hf") is not None, cfg.get("to_hf") is not None
    problems = Problems()
    if importing == exporting:
        problems.add(
            "from_hf", "give either from_hf=<HF dir> out=<dir> (import) or ckpt_path=<ckpt> to_hf=<dir> (export)"
        )
    elif importing and not cfg.get("out"):
        problems.add("out", "importing needs out=<dir>: where model.ckpt and model/<name>.yaml go")
    elif exporting and not cfg.get("ckpt_path"):
        problems.add("ckpt_path", "exporting needs ckpt_path=<checkpoint>: the tfgraph checkpoint to export")
    if cfg.get("dtype") is not None and cfg.dtype not in DTYPES:
        problems.add("dtype", f"expected one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    problems.raise_if_any()
    return import_hf(cfg) if importing else export_hf(cfg)


def import_hf(cfg: DictConfig) -> list[str]:
    from tfgraph.interop import from_hf, save_model_checkpoint

    model, model_cfg = from_hf(cfg.from_hf)
    out = Path(cfg.out)
    name = cfg.get("name") or f"hf_{_model_type(Path(cfg.from_hf))}"
    checkpoint = save_model_checkpoint(model, model_cfg, out / "model.ckpt", source=str(cfg.from_hf))
    config_file = out / "model" / f"{name}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Imported by tfgraph-convert from {cfg.from_hf}: {model.num_parameters():,} parameters.\n"
    config_file.write_text(header + yaml.safe_dump(model_cfg, sort_keys=False), encoding="utf-8")
    searchpath = f"hydra.searchpath=[file://{out.resolve()}]"
    return [
        f"imported {cfg.from_hf}: {model.topology}, {model.num_parameters():,} parameters",
        f"checkpoint {checkpoint}",
        f"model config {config_file}",
        f"draw it:      tfgraph-show {searchpath} model={name}",
        f"fine-tune it: tfgraph-train {searchpath} model={name} init_from={out} ...",
    ]


def export_hf(cfg: DictConfig) -> list[str]:
    from tfgraph.interop import read_model_checkpoint, to_hf
    from tfgraph.models import build_model

    model_cfg, state = read_model_checkpoint(cfg.ckpt_path, key="ckpt_path")
    if model_cfg is None:
        raise ConfigError.at("ckpt_path", f"{cfg.ckpt_path} holds no model config to rebuild its model from")
    model = build_model(model_cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:400]
        raise ConfigError.at(
            "ckpt_path", f"{cfg.ckpt_path}: its weights do not fit its model config: {detail}"
        ) from None
    dtype = DTYPES.get(cfg.get("dtype")) if cfg.get("dtype") else None
    out = to_hf(model, model_cfg, cfg.to_hf, family=cfg.get("family"), dtype=dtype,
                max_shard_bytes=cfg.get("max_shard_bytes"))  # fmt: skip
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    return [f"exported {cfg.ckpt_path} to {out}: {', '.join(files)}"]


def _model_type(directory: Path) -> str:
    import json

    try:
        return str(json.loads((directory / "config.json").read_text(encoding="utf-8")).get("model_type", "model"))
    except (OSError, ValueError, AttributeError):
        return "model"
