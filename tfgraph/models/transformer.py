"""The three topologies: stacks of layer graphs between a token embedding and (for generative models) a head.

The model call of the public contract::

    model(input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None)

returns next-token logits ``[B, T, vocab]`` for decoder_only and encoder_decoder (over the decoder
positions), and hidden states ``[B, T, d_model]`` for encoder_only. Masks are ``[B, T]`` with 1 for tokens
and 0 for padding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tfgraph.blocks.context import Position, memory_mask, self_attention_context
from tfgraph.graph import LayerGraph


class Stack(nn.Module):
    """Position encoding, embedding norm and dropout, the layers, and the final norm.

    The stack builds the attention context (masks, rotary tables, position biases) once per forward
    and hands it to every layer.

    forward(x: [B, T, d_model], padding_mask: [B, T] | None, memory: [B, S, d_model] | None,
    memory_padding_mask: [B, S] | None) -> [B, T, d_model]
    """

    def __init__(
        self,
        *,
        position: Position,
        layers: list[LayerGraph],
        causal: bool,
        dropout: float = 0.0,
        embed_norm: nn.Module | None = None,
        final_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.position = position
        self.embed_norm = embed_norm
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm
        self.causal = causal
        attention = [m for m in self.layers.modules() if "context" in getattr(type(m), "needs", ())]
        self.windows = tuple(dict.fromkeys(getattr(m, "window", None) for m in attention)) or (None,)

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        memory: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
    ) -> Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        x = self.position.embed(x, positions)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.drop(x)
        ctx = self_attention_context(
            self.position, positions, causal=self.causal, padding_mask=padding_mask, windows=self.windows
        )
        ctx.memory_mask = memory_mask(memory_padding_mask)
        for layer in self.layers:
            x = layer(x, ctx, memory)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x


class Transformer(nn.Module):
    """What the topologies share: the token (and token-type) embedding, the head, the MoE loss."""

    topology: str

    def __init__(self, *, embedding: nn.Module, token_type: nn.Module | None, head: nn.Module | None) -> None:
        super().__init__()
        self.embedding = embedding
        self.token_type = token_type
        self.head = head

    def embed(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Token embeddings plus token types: [B, T] -> [B, T, d_model]."""
        x = self.embedding(input_ids)
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type(token_type_ids)
        return x

    def aux_loss(self) -> Tensor | None:
        """The sum of the load-balancing losses of the last forward's mixture-of-experts blocks, if any."""
        losses = [m.aux_loss for m in self.modules() if isinstance(getattr(m, "aux_loss", None), Tensor)]
        return torch.stack(losses).sum() if losses else None

    def num_parameters(self) -> int:
        """Trainable parameters, each shared tensor counted once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class DecoderOnly(Transformer):
    """A causal stack with a language-model head (GPT, Llama)."""

    topology = "decoder_only"

    def __init__(self, *, decoder: Stack, **parts: Any) -> None:
        super().__init__(**parts)
        self.decoder = decoder

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """input_ids: [B, T] -> next-token logits [B, T, vocab]."""
        if decoder_input_ids is not None or decoder_attention_mask is not None:
            raise ValueError("a decoder_only model reads input_ids (and attention_mask) only; it has no decoder inputs")
        h = self.decoder(self.embed(input_ids, token_type_ids), attention_mask)
        return self.head(h)


class EncoderOnly(Transformer):
    """A bidirectional stack returning hidden states (BERT); tasks put their own heads on top."""

    topology = "encoder_only"

    def __init__(self, *, encoder: Stack, **parts: Any) -> None:
        super().__init__(**parts)
        self.encoder = encoder

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """input_ids: [B, T] -> hidden states [B, T, d_model]."""
        if decoder_input_ids is not None or decoder_attention_mask is not None:
            raise ValueError("an encoder_only model reads input_ids (and attention_mask) only; it has no decoder")
        return self.encoder(self.embed(input_ids, token_type_ids), attention_mask)


class EncoderDecoder(Transformer):
    """A bidirectional encoder and a causal decoder that cross-attends to it, sharing one embedding (T5)."""

    topology = "encoder_decoder"

    def __init__(self, *, encoder: Stack, decoder: Stack, **parts: Any) -> None:
        super().__init__(**parts)
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids: [B, S] -> memory [B, S, d_model]."""
        return self.encoder(self.embed(input_ids), attention_mask)

    def decode(
        self,
        decoder_input_ids: Tensor,
        memory: Tensor,
        attention_mask: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
    ) -> Tensor:
        """decoder_input_ids: [B, T], memory: [B, S, d_model] -> logits [B, T, vocab]."""
        h = self.decoder(self.embed(decoder_input_ids), decoder_attention_mask, memory, attention_mask)
        return self.head(h)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
    ) -> Tensor:
        """input_ids: [B, S], decoder_input_ids: [B, T] -> next-token logits [B, T, vocab]."""
        if decoder_input_ids is None:
            raise ValueError("an encoder_decoder model needs decoder_input_ids (the shifted target tokens)")
        memory = self.encode(input_ids, attention_mask)
        return self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask)
