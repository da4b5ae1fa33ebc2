"""Built-in blocks, one module per kind. Importing this package registers them all."""

from tfgraph.blocks import attention, embedding, ffn, heads, norm, ops, position, task_heads  # noqa: F401
from tfgraph.blocks.context import AttentionContext, Position

__all__ = ["AttentionContext", "Position"]
