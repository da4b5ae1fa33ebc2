"""tfgraph: transformers as graphs of registered blocks, composed from Hydra configs."""

from typing import Any

from tfgraph.config import compose
from tfgraph.models import build_model
from tfgraph.registry import ConfigError, register

__all__ = ["ConfigError", "build_model", "compose", "generate", "register"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``tfgraph.generate`` (:func:`tfgraph.inference.generate`), imported on first use: it needs the tasks and
    Lightning, which ``import tfgraph`` alone does not load."""
    if name == "generate":
        from tfgraph.inference import generate

        return generate
    raise AttributeError(f"module 'tfgraph' has no attribute {name!r}")
