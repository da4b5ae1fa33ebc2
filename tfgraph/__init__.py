"""tfgraph: transformers as graphs of registered blocks, composed from Hydra configs.

``import tfgraph`` registers the built-in blocks (:mod:`tfgraph.blocks`, which needs torch only) and loads the rest
on first use: :func:`compose` (Hydra), :func:`build_model` (the builders), :func:`generate` (the tasks and
Lightning), :func:`train` (``tfgraph.train.train``), :func:`check` (``tfgraph.checks.check``) and
:func:`load_tokenizer` (a run's ``tokenizer.json``). So
``import tfgraph.blocks, tfgraph.graph, tfgraph.models`` works without Hydra, OmegaConf or Lightning installed, and a
model builds from a plain dict config.
"""

from importlib import import_module
from typing import Any

import tfgraph.blocks  # noqa: F401 (registers the built-in blocks)
from tfgraph.registry import ConfigError, register

__all__ = [
    "ConfigError",
    "build_model",
    "check",
    "compose",
    "from_hf",
    "generate",
    "load_tokenizer",
    "register",
    "to_hf",
    "train",
]
__version__ = "0.1.0"

# the exports imported on first use: name -> the module that defines it
# (tfgraph.train is its module, callable as its train(cfg), so that `import tfgraph.train` changes nothing)
_LAZY = {
    "compose": "tfgraph.config",
    "build_model": "tfgraph.models",
    "generate": "tfgraph.inference",
    "train": "tfgraph.train",
    "check": "tfgraph.checks",
    "load_tokenizer": "tfgraph.data.tokenizers",
    "from_hf": "tfgraph.interop",
    "to_hf": "tfgraph.interop",
}


def __getattr__(name: str) -> Any:
    """``tfgraph.compose``, ``tfgraph.build_model``, ``tfgraph.generate``, ``tfgraph.train``, ``tfgraph.check`` and
    ``tfgraph.load_tokenizer``, imported on first use."""
    if name in _LAZY:
        module = import_module(_LAZY[name])
        value = module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'tfgraph' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted((set(globals()) | set(_LAZY)) - {"Any", "import_module", "tfgraph"})
