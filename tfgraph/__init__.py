"""tfgraph: transformers as graphs of registered blocks, composed from Hydra configs.

``import tfgraph`` registers the built-in blocks (:mod:`tfgraph.blocks`, which needs torch only) and loads the rest
on first use: :func:`compose` (Hydra), :func:`build_model` (the builders) and :func:`generate` (the tasks and
Lightning). So ``import tfgraph.blocks, tfgraph.graph, tfgraph.models`` works without Hydra, OmegaConf or Lightning
installed, and a model builds from a plain dict config.
"""

from importlib import import_module
from typing import Any

import tfgraph.blocks  # noqa: F401 (registers the built-in blocks)
from tfgraph.registry import ConfigError, register

__all__ = ["ConfigError", "build_model", "compose", "generate", "register"]
__version__ = "0.1.0"

# the exports imported on first use: name -> the module that defines it
_LAZY = {"compose": "tfgraph.config", "build_model": "tfgraph.models", "generate": "tfgraph.inference"}


def __getattr__(name: str) -> Any:
    """``tfgraph.compose``, ``tfgraph.build_model`` and ``tfgraph.generate``, imported on first use."""
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'tfgraph' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
