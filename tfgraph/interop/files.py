"""Hugging Face model directories as data: ``config.json`` and the weights, read lazily and written atomically.

Reading prefers safetensors (``model.safetensors``, or the shards a ``model.safetensors.index.json`` names), opened
memory-mapped so that one tensor at a time is in memory. A directory with only pickled weights
(``pytorch_model.bin``, or its sharded index) is read with ``torch.load(weights_only=True)``: a pickle that would
rebuild any other object is refused, never run. Nothing in a directory is imported or executed: ``auto_map`` and
custom code in a config are refused by :func:`read_config`.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tfgraph.registry import ConfigError

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
DEFAULT_SHARD_BYTES = 5 * 2**30  # as save_pretrained: shards of at most 5 GB


def read_config(directory: Path, key: str) -> dict[str, Any]:
    """The directory's ``config.json`` as a dict; a ConfigError at ``key`` when it is missing or not plain JSON."""
    file = directory / "config.json"
    if not directory.is_dir():
        raise ConfigError.at(key, f"{directory} is not a directory (a Hugging Face model directory has config.json)")
    if not file.is_file():
        raise ConfigError.at(key, f"{directory} has no config.json: not a Hugging Face model directory")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError.at(key, f"{file} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ConfigError.at(key, f"{file} holds {type(config).__name__}, expected a JSON object")
    if config.get("auto_map"):
        raise ConfigError.at(
            key,
            f"{file} names custom code (auto_map: {sorted(config['auto_map'])}); tfgraph never runs code from a "
            "model directory and maps only the architectures it knows",
        )
    return config


@contextmanager
def open_weights(directory: Path, key: str) -> Iterator[tuple[set[str], Any, Any]]:
    """``(keys, read, shape)`` of the directory's weights: ``read(name) -> Tensor`` reads one tensor (memory-mapped
    for safetensors), ``shape(name)`` its shape without reading it. A ConfigError at ``key`` when there are none or a
    file is not what its name says."""
    files = _weight_files(directory, key)
    with ExitStack() as stack:
        where: dict[str, Any] = {}
        if files[0].name.endswith(".safetensors"):
            from safetensors import SafetensorError, safe_open

            for file in files:
                try:
                    handle = stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
                except (SafetensorError, OSError) as err:
                    raise ConfigError.at(key, f"{file} is not a readable safetensors file: {err}") from None
                for name in handle.keys():
                    where[name] = handle
            yield (
                set(where),
                lambda name: where[name].get_tensor(name),
                lambda name: tuple(where[name].get_slice(name).get_shape()),
            )
        else:
            for file in files:
                where.update(_load_pickled(file, key))
            yield set(where), where.__getitem__, lambda name: tuple(where[name].shape)


def _weight_files(directory: Path, key: str) -> list[Path]:
    for single, index in ((SAFE_SINGLE, SAFE_INDEX), (BIN_SINGLE, BIN_INDEX)):
        if (directory / index).is_file():
            return _shards(directory, index, key)
        if (directory / single).is_file():
            return [directory / single]
    raise ConfigError.at(
        key,
        f"{directory} has no weights: expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}",
    )


def _shards(directory: Path, index: str, key: str) -> list[Path]:
    file = directory / index
    try:
        weight_map = json.loads(file.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError.at(key, f"{file} is not a shard index (a JSON object with a weight_map): {err}") from None
    shards = []
    for name in names:
        path = (directory / name).resolve()
        if not isinstance(name, str) or path.parent != directory.resolve():
            raise ConfigError.at(key, f"{file} names a shard outside its directory: {name!r}")
        if not path.is_file():
            raise ConfigError.at(key, f"{file} names the shard {name}, which is missing")
        shards.append(path)
    return shards


def _load_pickled(file: Path, key: str) -> dict[str, Tensor]:
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # a file in torch's legacy (not zip) format cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ConfigError.at(
            key,
            f"{file} is a pickle torch.load(weights_only=True) refuses ({str(err).splitlines()[0][:200]}); "
            "nothing in it was run. Convert it to safetensors with a tool you trust, or use a directory that has them",
        ) from None
    except Exception as err:
        raise ConfigError.at(key, f"{file} is not a readable torch file: {type(err).__name__}: {err}") from None
    if not isinstance(state, Mapping) or not all(isinstance(t, Tensor) for t in state.values()):
        raise ConfigError.at(key, f"{file} does not hold a state dict of tensors")
    return dict(state)


def write_directory(
    directory: Path, config: Mapping[str, Any], tensors: Mapping[str, Tensor], *, max_shard_bytes: int | None = None
) -> list[Path]:
    """Write ``config.json`` and the weights as safetensors (sharded with an index above ``max_shard_bytes``).

    Each file is written to a temporary name and renamed into place, so an interrupted export never leaves a file
    that reads as complete. Returns the files written.
    """
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    limit = DEFAULT_SHARD_BYTES if max_shard_bytes is None else max_shard_bytes
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    written = []
    for stale in (SAFE_SINGLE, SAFE_INDEX, BIN_SINGLE, BIN_INDEX):
        (directory / stale).unlink(missing_ok=True)
    for old in directory.glob("model-*-of-*.safetensors"):
        old.unlink()
    if len(shards) == 1:
        names = [SAFE_SINGLE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards, strict=True):
        written.append(atomic(directory / name, lambda tmp, shard=shard: save_file(shard, tmp, {"format": "pt"})))
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
            "weight_map": {key: name for name, shard in zip(names, shards, strict=True) for key in shard},
        }
        written.append(atomic(directory / SAFE_INDEX, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2))))
    text = json.dumps(dict(config), indent=2, sort_keys=True) + "\n"
    written.append(atomic(directory / "config.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8")))
    return written


def atomic(target: Path, write: Any) -> Path:
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


__all__ = ["atomic", "open_weights", "read_config", "write_directory"]
