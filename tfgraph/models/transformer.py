"""The three topologies: stacks of layer graphs between a token embedding and (for generative models) a head.

The model call of the public contract::

    model(input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None)

returns next-token logits ``[B, T, vocab]`` for decoder_only and encoder_decoder (over the decoder
positions), and hidden states ``[B, T, d_model]`` for encoder_only. Masks are ``[B, T]`` with 1 for tokens
and 0 for padding.

Generation continues a causal stack from a KV cache (``model.new_cache(batch)``, then ``cache=...`` on each
call with only the new tokens); see :class:`~tfgraph.blocks.context.StackCache` for how slots, positions and
padding are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tfgraph.blocks.attention import ScaledDotProductAttention
from tfgraph.blocks.context import (
    AttentionContext,
    Position,
    StackCache,
    cached_attention_context,
    has_score_bias,
    memory_mask,
    self_attention_context,
)
from tfgraph.blocks.kernels import BACKENDS
from tfgraph.graph import LayerGraph
from tfgraph.registry import reports_aux_loss

if TYPE_CHECKING:
    from tfgraph.spec import ModelSpec

REQUIRED_SIZES = ("d_model", "vocab_size", "max_len")  # what a model reads of its sizes itself


class Stack(nn.Module):
    """Position encoding, embedding norm and dropout, the layers, and the final norm.

    The stack builds the attention context (masks, rotary tables, position biases) once per forward
    and hands it to every layer.

    forward(x: [B, T, d_model], padding_mask: [B, T] | None, memory: [B, S, d_model] | None,
    memory_padding_mask: [B, S] | None, *, position_ids: [T] | [B, T] | None, cache: StackCache | None)
    -> [B, T, d_model]

    Without a cache, tokens are slots ``0 .. T-1`` and, unless ``position_ids`` says otherwise (left padding),
    at those positions. With a cache (from :meth:`new_cache`), ``x`` holds only the new tokens, which continue
    after the cached ones; ``padding_mask`` then covers the new tokens only.

    With ``activation_checkpointing`` each layer graph keeps only its input for the backward pass and runs again
    there (``torch.utils.checkpoint``, non-reentrant, so it traces under ``torch.compile``): less memory for a
    second forward of the layers. It applies while training with gradients on, never with a cache.

    ``attention_backend`` picks the attention kernel of every forward (:mod:`tfgraph.blocks.kernels`): ``sdpa``,
    ``flex``, ``math``, or ``auto``: ``flex`` on CUDA for a forward without a cache whose masks carry a position bias or a
    sliding window (and no attention dropout while training), ``sdpa`` otherwise. The blocks' math is the same for all;
    it may be set on a built model (``stack.attention_backend = "math"``).
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
        activation_checkpointing: bool = False,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        if attention_backend not in BACKENDS:
            raise ValueError(f"attention_backend must be one of {', '.join(BACKENDS)}; got {attention_backend!r}")
        self.attention_backend = attention_backend
        self.position = position
        self.embed_norm = embed_norm
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm
        self.causal = causal
        self.activation_checkpointing = activation_checkpointing
        self._compiled: Callable[..., Tensor] | None = None  # compile_layers(together=True)
        self.windows = tuple(dict.fromkeys(w for layer in layers for w in layer.windows())) or (None,)
        # auto's flex: where the masks carry what SDPA can only take densely, and no attention block drops weights
        self._flex_pays = has_score_bias(position) or any(w is not None for w in self.windows)
        self._drops_weights = any(
            isinstance(m, ScaledDotProductAttention) and m.dropout > 0 for layer in layers for m in layer.modules()
        )

    def kernel(self, x: Tensor, cache: StackCache | None) -> str:
        """The attention kernel of a forward over ``x`` (``sdpa``, ``flex`` or ``math``), from ``attention_backend``."""
        if self.attention_backend != "auto":
            return self.attention_backend
        flex = (
            x.device.type == "cuda"
            and cache is None
            and self._flex_pays
            and not (self.training and self._drops_weights)
        )
        return "flex" if flex else "sdpa"

    def run_layers(self, x: Tensor, ctx: AttentionContext, memory: Tensor | None = None) -> Tensor:
        """The layers one after another without a cache (training, evaluation), checkpointed where that is on."""
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            for layer in self.layers:
                x = checkpoint(layer, x, ctx, memory, use_reentrant=False)
        else:
            for layer in self.layers:
                x = layer(x, ctx, memory)
        return x

    def compile_layers(self, *, together: bool, backend: str = "inductor") -> None:
        """``torch.compile`` the layers for the forward without a cache (training, evaluation); generating from a
        cache stays eager.

        Args:
            together: all layers as one graph (:meth:`run_layers`), else each layer graph apart, in place
                (``nn.Module.compile``: layers that share their code compile once; this survives FSDP wrapping
                each layer).
            backend: the ``torch.compile`` backend.
        """
        if together:
            self._compiled = torch.compile(self.run_layers, backend=backend)
        else:
            for layer in self.layers:
                layer.compile(backend=backend)

    def new_cache(self, batch: int, max_len: int, *, dtype: torch.dtype, device: torch.device | str) -> StackCache:
        """An empty cache of ``max_len`` slots for ``batch`` rows, for a causal stack whose attention keeps one."""
        if not self.causal:
            raise ValueError("only a causal stack continues from a KV cache (a bidirectional one re-reads everything)")
        blocking = [f"layers.{i}.{name}" for i, layer in enumerate(self.layers) for name in layer.uncacheable()]
        if blocking:
            raise ValueError(
                f"{', '.join(blocking)} take the attention context but keep no cache (they declare no 'cache' in "
                "`needs`); generate without the cache (use_cache=False)"
            )
        layers = [layer.new_cache(batch, max_len, dtype=dtype, device=device) for layer in self.layers]
        return StackCache(layers, max_len)

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        memory: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        cache: StackCache | None = None,
    ) -> Tensor:
        x, ctx = self._prelude(x, padding_mask, memory_padding_mask, position_ids, cache)
        if cache is None:
            x = (self._compiled or self.run_layers)(x, ctx, memory)
        else:  # the new tokens after the cached ones; the cache takes their keys and values
            for layer, entries in zip(self.layers, cache.layers, strict=True):
                x = layer._call_impl(x, ctx, memory, entries)  # eager, also where compile_layers compiled the layer
            cache.length += x.shape[1]
        return x if self.final_norm is None else self.final_norm(x)

    def _prelude(
        self,
        x: Tensor,
        padding_mask: Tensor | None,
        memory_padding_mask: Tensor | None,
        position_ids: Tensor | None,
        cache: StackCache | None,
    ) -> tuple[Tensor, AttentionContext]:
        """The embeddings with positions, embedding norm and dropout, and the attention context of this forward."""
        kernel = self.kernel(x, cache)
        if cache is None:
            positions = torch.arange(x.shape[1], device=x.device)
            ctx = self_attention_context(
                self.position,
                positions,
                causal=self.causal,
                padding_mask=padding_mask,
                windows=self.windows,
                rope_positions=position_ids,
                kernel=kernel,
            )
            if position_ids is not None:
                positions = position_ids
        else:
            if position_ids is not None:
                raise ValueError(
                    "with a cache, positions follow from the cache and the padding masks; drop position_ids"
                )
            positions = cache.positions(x, padding_mask)
            ctx = cached_attention_context(
                self.position,
                offset=cache.length,
                length=x.shape[1],
                positions=positions,
                key_mask=cache.key_mask,
                windows=self.windows,
                kernel=kernel,
            )
        ctx.memory_mask = memory_mask(memory_padding_mask, flex_queries=x.shape[1] if ctx.kernel == "flex" else None)
        x = self.position.embed(x, positions)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.drop(x), ctx


class Transformer(nn.Module):
    """What the topologies share: the token (and token-type) embedding, the head, the sizes, the MoE loss.

    A model carries what tasks and decoding read of it: :attr:`sizes` (the model-level sizes its blocks were
    built with) and the properties over them, :attr:`init_std`, :attr:`tie_embeddings`, and :meth:`hidden_states`.
    :func:`tfgraph.build_model` passes them from the checked :class:`~tfgraph.spec.ModelSpec`; a model assembled by
    hand passes them itself (``sizes={"d_model": 64, "vocab_size": 100, "max_len": 128}`` at least).

    Args:
        embedding: token embedding, ``[B, T]`` -> ``[B, T, d_model]``.
        token_type: token-type embedding (BERT's segments), or ``None``.
        head: the language-model head, ``[B, T, d_model]`` -> ``[B, T, vocab]``, or ``None`` (encoder_only).
        sizes: the model-level sizes (:data:`~tfgraph.spec.SIZE_KEYS`); ``d_model``, ``vocab_size`` and
            ``max_len`` are required.
        init_std: the std of the normal initialisation (of the model's weights and of heads tasks add).
        tie_embeddings: share the head's weight with the embedding's (set here, when there is a head).
        spec: the :class:`~tfgraph.spec.ModelSpec` the model was built from (``None`` for one built by hand).
    """

    topology: str

    def __init__(
        self,
        *,
        embedding: nn.Module,
        token_type: nn.Module | None = None,
        head: nn.Module | None = None,
        sizes: Mapping[str, Any],
        init_std: float = 0.02,
        tie_embeddings: bool = False,
        spec: ModelSpec | None = None,
    ) -> None:
        super().__init__()
        missing = [key for key in REQUIRED_SIZES if key not in sizes]
        if missing:
            raise ValueError(f"{type(self).__name__} needs the model-level sizes {', '.join(missing)} in `sizes`")
        self.embedding = embedding
        self.token_type = token_type
        self.head = head
        if head is not None and tie_embeddings:
            head.weight = embedding.weight
        self._sizes = dict(sizes)  # a plain dict, so that the model pickles (spawned DDP workers) and deep-copies
        self._init_std = float(init_std)
        self._tie_embeddings = bool(tie_embeddings)
        self.spec = spec
        self._aux_blocks: list[nn.Module] | None = None  # found on first use, once the stacks are in place

    @property
    def sizes(self) -> Mapping[str, Any]:
        """The model-level sizes (``d_model``, ``n_heads``, ``max_len``, ...), read-only."""
        return MappingProxyType(self._sizes)

    @property
    def max_len(self) -> int:
        """The most positions a sequence may have."""
        return int(self._sizes["max_len"])

    @property
    def vocab_size(self) -> int:
        """The number of token ids (the logits' last dimension)."""
        return int(self._sizes["vocab_size"])

    @property
    def d_model(self) -> int:
        """The width of the hidden states."""
        return int(self._sizes["d_model"])

    @property
    def init_std(self) -> float:
        """The std of the normal initialisation of the weights."""
        return self._init_std

    @property
    def tie_embeddings(self) -> bool:
        """Whether a head shares the token embedding's weight."""
        return self._tie_embeddings

    @property
    def config(self) -> dict[str, Any] | None:
        """The resolved model config as plain containers (``None`` for a model built by hand)."""
        return None if self.spec is None else self.spec.config

    def hidden_states(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """The last stack's output before the head: [B, T] -> [B, T, d_model] (encoder_only and decoder_only)."""
        raise ValueError(
            f"a {self.topology} model has no single stack to take hidden states from; use encode() and decode()"
        )

    def embed(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Token embeddings plus token types: [B, T] -> [B, T, d_model]."""
        x = self.embedding(input_ids)
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type(token_type_ids)
        return x

    def logits(self, h: Tensor, logits_to_keep: int | None = None) -> Tensor:
        """The head on hidden states [B, T, d_model]; of the last ``logits_to_keep`` positions only if given."""
        return self.head(h if logits_to_keep is None else h[:, -logits_to_keep:])

    def check_single_stack(self, decoder_input_ids: Tensor | None, decoder_attention_mask: Tensor | None) -> None:
        """Refuse decoder inputs given to a model with one stack."""
        if decoder_input_ids is not None or decoder_attention_mask is not None:
            article = "an" if self.topology.startswith(("a", "e", "i", "o", "u")) else "a"
            raise ValueError(
                f"{article} {self.topology} model reads input_ids (and attention_mask) only; it has no decoder inputs"
            )

    def _reporting_aux_loss(self) -> list[nn.Module]:
        """The blocks that report a load-balancing loss: those whose protocol says so, and (as before protocols
        existed) any that holds a tensor ``aux_loss`` once built."""
        if self._aux_blocks is None:
            self._aux_blocks = [
                m
                for m in self.modules()
                if m is not self and (reports_aux_loss(type(m)) or isinstance(getattr(m, "aux_loss", None), Tensor))
            ]
        return self._aux_blocks

    @property
    def has_aux_loss(self) -> bool:
        """Whether a block reports an auxiliary loss (a mixture of experts' load balancing)."""
        return bool(self._reporting_aux_loss())

    def aux_loss(self) -> Tensor | None:
        """The sum of the load-balancing losses of the last forward's mixture-of-experts blocks, if any."""
        losses = [m.aux_loss for m in self._reporting_aux_loss() if isinstance(getattr(m, "aux_loss", None), Tensor)]
        return torch.stack(losses).sum() if losses else None

    def num_parameters(self) -> int:
        """Trainable parameters, each shared tensor counted once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def new_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> StackCache:
        """An empty KV cache for the decoder stack of a generative model.

        Args:
            batch_size: rows of the batch that will be generated.
            max_len: slots (tokens fed to the decoder, all calls together); default ``model.max_len``.
            dtype: of the cached keys and values; default the embedding's.
            device: default the embedding's.
        """
        decoder = getattr(self, "decoder", None)
        if not isinstance(decoder, Stack):
            raise ValueError(f"a {self.topology} model has no decoder to generate with, so it keeps no KV cache")
        weight = next(self.embedding.parameters())
        return decoder.new_cache(
            batch_size,
            self.max_len if max_len is None else max_len,
            dtype=weight.dtype if dtype is None else dtype,
            device=weight.device if device is None else device,
        )


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
        *,
        position_ids: Tensor | None = None,
        cache: StackCache | None = None,
        logits_to_keep: int | None = None,
    ) -> Tensor:
        """input_ids: [B, T] -> next-token logits [B, T, vocab].

        Args:
            input_ids: [B, T] tokens; with a cache, the new tokens only.
            attention_mask: [B, T] 1 for tokens, 0 for padding (with a cache: of the new tokens).
            position_ids: [T] or [B, T] positions (default ``0 .. T-1``; left padding needs its own per row, e.g.
                ``(attention_mask.cumsum(1) - 1).clamp(min=0)``). Not with a cache, which counts them itself.
            cache: a :meth:`new_cache` to continue from and append to.
            logits_to_keep: compute the logits of the last this many positions only ([B, logits_to_keep, vocab]).
        """
        self.check_single_stack(decoder_input_ids, decoder_attention_mask)
        h = self.hidden_states(input_ids, attention_mask, token_type_ids, position_ids=position_ids, cache=cache)
        return self.logits(h, logits_to_keep)

    def hidden_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        cache: StackCache | None = None,
    ) -> Tensor:
        """The decoder stack's output before the head: [B, T] -> [B, T, d_model] (arguments as :meth:`forward`)."""
        return self.decoder(
            self.embed(input_ids, token_type_ids), attention_mask, position_ids=position_ids, cache=cache
        )


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
        self.check_single_stack(decoder_input_ids, decoder_attention_mask)
        return self.hidden_states(input_ids, attention_mask, token_type_ids)

    def hidden_states(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """The encoder stack's output: [B, T] -> [B, T, d_model] (what :meth:`forward` returns)."""
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
        *,
        cache: StackCache | None = None,
        logits_to_keep: int | None = None,
    ) -> Tensor:
        """decoder_input_ids: [B, T], memory: [B, S, d_model] -> logits [B, T, vocab].

        With a ``cache`` (:meth:`new_cache`), ``decoder_input_ids`` are the new tokens only and the cross-attention
        keys and values of ``memory`` are computed on the first call and reused after. ``logits_to_keep``: compute
        the logits of the last this many positions only.
        """
        h = self.decoder(self.embed(decoder_input_ids), decoder_attention_mask, memory, attention_mask, cache=cache)
        return self.logits(h, logits_to_keep)

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
