"""tfgraph: transformers as graphs of registered blocks, composed from Hydra configs."""

from tfgraph.config import compose
from tfgraph.models import build_model
from tfgraph.registry import ConfigError, register

__all__ = ["ConfigError", "build_model", "compose", "register"]
__version__ = "0.1.0"
