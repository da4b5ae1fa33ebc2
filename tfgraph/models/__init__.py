"""The three topologies and the builder that makes them from a model config."""

from tfgraph.models.build import build_model
from tfgraph.models.transformer import DecoderOnly, EncoderDecoder, EncoderOnly, Stack, Transformer

__all__ = ["DecoderOnly", "EncoderDecoder", "EncoderOnly", "Stack", "Transformer", "build_model"]
