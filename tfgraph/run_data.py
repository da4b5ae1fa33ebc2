"""The DataModule a run reads: from the user's data config, or from the data config a checkpoint stores.

A user's config is instantiated by Hydra (its ``_target_`` is the user's choice); a checkpoint's is data, never
code: its class is one :func:`tfgraph.tasks.data_module_class` allows, called with the plain options, and the
checkpoint's tokenizer and label names replace any it would train or read. Every mistake is a
:class:`tfgraph.ConfigError` at ``data`` (or ``ckpt_path``); missing or malformed data a
:class:`tfgraph.data.DataError`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from pytorch_lightning.utilities.model_helpers import is_overridden

from tfgraph.data import DataError
from tfgraph.registry import ConfigError
from tfgraph.run_checks import check_fits
from tfgraph.tasks import data_module_class, stored_locations


def build_datamodule(
    data_cfg: Mapping[str, Any] | None,
    *,
    tokenizer: str | None = None,
    label_names: list[str] | None = None,
    cls: type[pl.LightningDataModule] | None = None,
) -> pl.LightningDataModule:
    """The DataModule a data config names (``_target_``), optionally reusing a tokenizer and labels.

    Args:
        data_cfg: the ``data`` node as plain containers.
        tokenizer: a tokenizer's JSON (from a checkpoint) to use instead of training one.
        label_names: the label names of a checkpoint, so that label ids mean what they meant in training.
        cls: the class to call with the config's options as they are, for a checkpoint's data (looked up by
            :func:`tfgraph.tasks.data_module_class`, never instantiated by Hydra); None: Hydra instantiates the
            ``_target_`` of a user's config.
    """
    if not data_cfg or "_target_" not in data_cfg:
        raise ConfigError.at("data", "no data config: choose one, e.g. data=text data.path=book.txt")
    data_cfg = dict(data_cfg)
    if tokenizer is not None:
        data_cfg["tokenizer_json"] = tokenizer
        data_cfg.pop("tokenizer_path", None)
    if label_names is not None and "label_names" in data_cfg:
        data_cfg["label_names"] = list(label_names)
    if cls is not None:
        options = {key: value for key, value in data_cfg.items() if key != "_target_"}
        try:
            return cls(**options)
        except (DataError, ConfigError):
            raise
        except (TypeError, ValueError) as err:
            raise ConfigError.at("data", f"{cls.__name__}: {err}") from None
    try:
        return instantiate(data_cfg, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (DataError, ConfigError)):
            raise cause from None
        raise ConfigError.at("data", str(cause or err)) from err


def checkpoint_datamodule(
    checkpoint: Mapping[str, Any],
    *,
    where: str,
    overrides: Mapping[str, Any] | None = None,
    trust_plugins: bool = False,
) -> pl.LightningDataModule:
    """The DataModule of a checked checkpoint's data config, with its tokenizer and label names.

    Its class is one :func:`tfgraph.tasks.data_module_class` allows, called with the plain options (no Hydra).

    Args:
        checkpoint: as :func:`tfgraph.tasks.load_checkpoint` returned it.
        where: the checkpoint's path, for the messages.
        overrides: the user's keys over the checkpoint's (``tfgraph-eval +data.batch_size=64``); a ``_target_``
            among them is the user's choice, imported as any module of the user's config is.
        trust_plugins: let the checkpoint import the module of the class it names.
    """
    args = checkpoint["hyper_parameters"]
    overrides = dict(overrides or {})
    data_cfg = {**(args.get("data") or {}), **overrides}
    if "_target_" not in data_cfg:
        raise ConfigError.at("data", f"{where} holds no data config: give one, e.g. +data._target_=...")
    trusted = trust_plugins or "_target_" in overrides
    chosen = [] if trusted else stored_locations(args.get("data"), overrides)
    if chosen:
        raise ConfigError(
            [
                (
                    "ckpt_path",
                    f"{where}: {key} is set in the checkpoint: a checkpoint may not choose where files are written "
                    f"or what is fetched; set it yourself (tfgraph-eval +{key}=... or null), or trust_plugins=true",
                )
                for key in chosen
            ]
        )
    cls = data_module_class(data_cfg["_target_"], where=where, trust_plugins=trusted)
    return build_datamodule(data_cfg, tokenizer=args["tokenizer"], label_names=args.get("label_names"), cls=cls)


def set_up(datamodule: pl.LightningDataModule, task_name: str | None, stage: str) -> pl.LightningDataModule:
    """``datamodule`` checked to feed the task ``task_name`` (:func:`~tfgraph.run_checks.check_fits`), its data
    prepared and set up for ``stage`` (``fit``, ``validate``, ``test``)."""
    check_fits(task_name, datamodule)
    datamodule.prepare_data()
    datamodule.setup(stage)
    return datamodule


def absolute_paths(data_cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    """The data config with its relative file paths (``*path`` keys naming existing files) made absolute, so
    that a checkpoint's copy finds the data from any working directory."""
    if not data_cfg:
        return data_cfg
    return {
        key: os.path.abspath(value)
        if key.endswith("path") and isinstance(value, str) and value and glob.glob(value) and not os.path.isabs(value)
        else value
        for key, value in data_cfg.items()
    }


def has_split(datamodule: pl.LightningDataModule, split: str) -> bool:
    """Whether the DataModule has a non-empty ``split`` loader."""
    if not is_overridden(f"{split}_dataloader", datamodule, pl.LightningDataModule):
        return False
    datasets = getattr(datamodule, "datasets", None)
    if isinstance(datasets, Mapping):
        dataset = datasets.get(split)
        return dataset is not None and len(dataset) > 0
    return True
