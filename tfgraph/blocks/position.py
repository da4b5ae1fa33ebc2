"""Position blocks: how a stack tells its tokens apart by position.

Each block implements one hook of :class:`~tfgraph.blocks.context.Position`:

- absolute schemes (``learned``, ``sinusoidal``) add a vector to the token embeddings (``embed``);
- rotary schemes (``rope``) return ``(cos, sin)`` tables that attention applies to q and k (``rotary``);
- bias schemes (``alibi``, ``t5_bias``) return an additive attention-score bias (``score_bias``).

The stack calls the hooks once per forward; attention blocks read the results from the
:class:`~tfgraph.blocks.context.AttentionContext`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from tfgraph.blocks.context import Position
from tfgraph.registry import AtLeast, ConfigError, Interval, Positive, register


@register("position", "none")
class NoPosition(Position):
    """No position information at all (a bag of tokens, or a model that relies on causal masking alone)."""


@register("position", "learned")
class LearnedPosition(Position):
    """A learned vector per absolute position, added to the embeddings (GPT-2, BERT).

    Args:
        max_len: number of positions in the table; positions must be ``< max_len``.
        d_model: model width.
    """

    hf_layout = {"table": "table"}  # its weights as Hugging Face checkpoints hold them (tfgraph.interop)

    def __init__(self, *, max_len: int, d_model: int) -> None:
        super().__init__()
        self.table = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.table.weight, std=0.02)  # GPT-2's initialisation

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: [B, T, d_model], positions: [T] or [B, T] -> [B, T, d_model]."""
        return x + self.table(positions)


def sinusoid_table(max_len: int, d_model: int) -> Tensor:
    """The fixed table of Vaswani et al. (2017), ``[max_len, d_model]``.

    ``table[p, 2i] = sin(p / 10000^(2i / d_model))`` and ``table[p, 2i + 1] = cos(p / 10000^(2i / d_model))``.
    """
    position = torch.arange(max_len, dtype=torch.float32)[:, None]  # [max_len, 1]
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])  # an odd d_model has one cosine fewer
    return table


@register("position", "sinusoidal")
class SinusoidalPosition(Position):
    """Fixed sinusoidal vectors added to the embeddings (the original Transformer). No parameters.

    Args:
        max_len: number of positions in the table; positions must be ``< max_len``.
        d_model: model width.
    """

    def __init__(self, *, max_len: int, d_model: int) -> None:
        super().__init__()
        self.register_buffer("table", sinusoid_table(max_len, d_model), persistent=False)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: [B, T, d_model], positions: [T] or [B, T] -> [B, T, d_model]."""
        return x + self.table[positions].to(x.dtype)


@register("position", "rope")
class RotaryPosition(Position):
    """Rotary position embedding (Su et al., 2021) in the GPT-NeoX / Llama ``rotate_half`` layout.

    Dimension ``i`` of the rotated part is paired with dimension ``i + rot_dim / 2`` and the pair is rotated by
    the angle ``position * base^(-2i / rot_dim)``. With ``fraction < 1`` only the first ``rot_dim`` dimensions of
    each head are rotated and the rest pass through (partial rotary, as in GPT-NeoX and Phi).

    Args:
        d_model: model width.
        n_heads: number of query heads.
        head_dim: the size of each head, as in attention (``None`` = ``d_model // n_heads``).
        max_len: number of positions in the tables; positions must be ``< max_len``.
        base: the wavelength base ``theta``; positive.
        fraction: the share of each head's dimensions that is rotated, in ``(0, 1]``; ``rot_dim`` is
            ``int(head_dim * fraction)`` rounded down to an even number.
        scaling: context-extension scaling of the frequencies as Hugging Face stores it (``rope_scaling`` or
            ``rope_parameters``): a mapping with ``rope_type`` (or the older ``type``) and that type's keys, see
            :data:`ROPE_SCALINGS`; ``None`` = unscaled.
    """

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_len: int,
        head_dim: Annotated[int, AtLeast(1)] | None = None,
        base: Annotated[float, Positive] = 10000.0,
        fraction: Annotated[float, Interval(gt=0, le=1)] = 1.0,
        scaling: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        problem = scaling_problem(scaling)
        if problem:
            raise ConfigError.at("scaling", problem)
        if head_dim is None and d_model % n_heads:
            raise ValueError(f"rope: d_model={d_model} is not divisible by n_heads={n_heads}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"rope: fraction must be in (0, 1], got {fraction}")
        head_dim = d_model // n_heads if head_dim is None else head_dim
        self.rot_dim = _rot_dim(head_dim, fraction)
        if self.rot_dim == 0:
            raise ValueError(f"rope: fraction={fraction} of head_dim={head_dim} leaves no pair of dimensions to rotate")
        inv_freq, attention_factor = rope_frequencies(self.rot_dim, base, scaling, max_len)
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # [max_len, rot_dim / 2]
        angles = torch.cat((freqs, freqs), dim=-1)  # [max_len, rot_dim], the rotate_half layout
        self.register_buffer("cos", angles.cos() * attention_factor, persistent=False)
        self.register_buffer("sin", angles.sin() * attention_factor, persistent=False)

    @staticmethod
    def check_args(
        *, d_model: int, n_heads: int, head_dim: int | None = None, fraction: float = 1.0, scaling: Any = None, **_: Any
    ) -> dict[str, str]:
        """At least one pair of each head's dimensions must rotate, and the scaling must be one supported."""
        problems = {}
        source = "model.d_model / model.n_heads" if head_dim is None else "model.head_dim"
        head_dim = d_model // n_heads if head_dim is None else head_dim
        if _rot_dim(head_dim, fraction) == 0:
            problems["fraction"] = (
                f"fraction={fraction} of head_dim={head_dim} ({source}) leaves no "
                "pair of dimensions to rotate; raise fraction or the head size"
            )
        problem = scaling_problem(scaling)
        if problem:
            problems["scaling"] = problem
        return problems

    def rotary(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions: [T] -> ``(cos, sin)``, each [T, rot_dim]; per-row positions [B, T] -> each [B, 1, T, rot_dim]."""
        cos, sin = self.cos[positions], self.sin[positions]
        if positions.dim() == 2:  # one table per row, broadcast over the heads
            return cos[:, None], sin[:, None]
        return cos, sin


def _default_frequencies(inv_freq: Tensor, **_: Any) -> tuple[Tensor, float]:
    return inv_freq, 1.0


def _linear_frequencies(inv_freq: Tensor, *, factor: float, **_: Any) -> tuple[Tensor, float]:
    """Position interpolation (Chen et al., 2023): every frequency divided by ``factor``."""
    return inv_freq / factor, 1.0


def _llama3_frequencies(
    inv_freq: Tensor,
    *,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position_embeddings: int,
    **_: Any,
) -> tuple[Tensor, float]:
    """Llama 3.1's scaling: wavelengths above ``original / low_freq_factor`` are divided by ``factor``, those below
    ``original / high_freq_factor`` kept, and the band between blends the two linearly in ``original / wavelength``.
    """
    wavelength = 2 * math.pi / inv_freq
    # 0 where the wavelength is long (interpolate fully), 1 where it is short (keep), linear in between.
    keep = (
        (original_max_position_embeddings / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    ).clamp(0, 1)
    return keep * inv_freq + (1 - keep) * inv_freq / factor, 1.0


def _yarn_frequencies(
    inv_freq: Tensor,
    *,
    rot_dim: int,
    base: float,
    max_len: int,
    factor: float | None = None,
    original_max_position_embeddings: int | None = None,
    attention_factor: float | None = None,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
    beta_fast: float | None = None,
    beta_slow: float | None = None,
    truncate: bool = True,
    **_: Any,
) -> tuple[Tensor, float]:
    """YaRN (Peng et al., 2023): dimensions that turn fewer than ``beta_slow`` times over the original context are
    interpolated by ``factor``, those turning more than ``beta_fast`` times kept, a linear ramp between; cos and sin
    are multiplied by ``attention_factor`` (``0.1 ln(factor) + 1`` unless given).
    """
    original = original_max_position_embeddings or max_len
    factor = max_len / original if factor is None else factor

    def magnitude(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention_factor is None:
        attention_factor = (
            magnitude(factor, mscale) / magnitude(factor, mscale_all_dim)
            if mscale and mscale_all_dim
            else magnitude(factor)
        )

    def dimension_turning(turns: float) -> float:  # the dimension that turns `turns` times over the original context
        return rot_dim * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = dimension_turning(beta_fast or 32), dimension_turning(beta_slow or 1)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rot_dim - 1)
    high = high + 0.001 if low == high else high
    interpolate = ((torch.arange(rot_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    return inv_freq / factor * interpolate + inv_freq * (1 - interpolate), float(attention_factor)


ROPE_SCALINGS: dict[str, tuple[Any, tuple[str, ...], tuple[str, ...]]] = {
    # rope_type: (function, required keys, optional keys), as Hugging Face's modeling_rope_utils names them
    "default": (_default_frequencies, (), ()),
    "linear": (_linear_frequencies, ("factor",), ()),
    "llama3": (
        _llama3_frequencies,
        ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
        (),
    ),
    "yarn": (
        _yarn_frequencies,
        (),
        (
            "factor",
            "original_max_position_embeddings",
            "attention_factor",
            "mscale",
            "mscale_all_dim",
            "beta_fast",
            "beta_slow",
            "truncate",
        ),
    ),
}
"""The supported RoPE scalings: ``rope_type`` -> (function, required keys, optional keys)."""


def _scaling_type(scaling: Mapping[str, Any]) -> str | None:
    return scaling.get("rope_type") or scaling.get("type")


def scaling_problem(scaling: Any) -> str | None:
    """What is wrong with a ``scaling`` mapping (see :data:`ROPE_SCALINGS`), or None when it is supported."""
    if scaling is None:
        return None
    if not isinstance(scaling, Mapping):
        return f"expected a mapping with rope_type and its keys, got {scaling!r}"
    rope_type = _scaling_type(scaling)
    if rope_type not in ROPE_SCALINGS:
        return f"rope_type {rope_type!r} is not supported; supported: {', '.join(ROPE_SCALINGS)}"
    _, required, optional = ROPE_SCALINGS[rope_type]
    keys = set(scaling) - {"rope_type", "type"}
    missing = [key for key in required if key not in keys]
    unknown = sorted(keys - set(required) - set(optional))
    if missing or unknown:
        found = [f"{what} {keys}" for what, keys in (("missing", missing), ("unknown", unknown)) if keys]
        if not required:
            takes = f"its keys, all optional: {list(optional)}"
        else:
            takes = f"it takes {list(required)}" + (f" and optionally {list(optional)}" if optional else "")
        return f"rope_type {rope_type!r}: {', '.join(found)}; {takes}"
    numbers = [key for key in keys if key != "truncate" and scaling[key] is not None]
    wrong = [key for key in numbers if isinstance(scaling[key], bool) or not isinstance(scaling[key], (int, float))]
    if wrong:
        return f"rope_type {rope_type!r}: expected numbers for {sorted(wrong)}"
    if any(scaling[key] <= 0 for key in numbers if key not in ("mscale", "mscale_all_dim")):
        return f"rope_type {rope_type!r}: expected positive {sorted(numbers)}"
    if rope_type == "llama3" and scaling["low_freq_factor"] >= scaling["high_freq_factor"]:
        return f"rope_type 'llama3': expected low_freq_factor < high_freq_factor, got {dict(scaling)}"
    return None


def rope_frequencies(
    rot_dim: int, base: float, scaling: Mapping[str, Any] | None, max_len: int
) -> tuple[Tensor, float]:
    """The inverse frequencies ``[rot_dim / 2]`` of RoPE and the factor on cos and sin, scaled by ``scaling``.

    Computed in float32 the way Hugging Face does, so that imported checkpoints reproduce exactly.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.int64).float() / rot_dim))
    if scaling is None:
        return inv_freq, 1.0
    function, _, _ = ROPE_SCALINGS[_scaling_type(scaling)]
    keys = {key: value for key, value in scaling.items() if key not in ("rope_type", "type")}
    return function(inv_freq, rot_dim=rot_dim, base=base, max_len=max_len, **keys)


def _rot_dim(head_dim: int, fraction: float) -> int:
    """How many of a head's dimensions rotate: ``int(head_dim * fraction)`` rounded down to an even number."""
    return int(head_dim * fraction) // 2 * 2


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``rot_dim`` dimensions of every head; the rest pass through.

    Args:
        x: [B, H, T, head_dim] queries or keys.
        cos: [T, rot_dim] (or [B, 1, T, rot_dim]) from :meth:`RotaryPosition.rotary`.
        sin: like ``cos``.

    Returns:
        [B, H, T, head_dim], in the dtype of ``x``.
    """
    rot_dim = cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x_rot = x[..., :rot_dim]
    x1, x2 = x_rot.chunk(2, dim=-1)
    rotated = x_rot * cos + torch.cat((-x2, x1), dim=-1) * sin  # rotate_half(x) = (-x2, x1)
    if rot_dim == x.shape[-1]:
        return rotated
    return torch.cat((rotated, x[..., rot_dim:]), dim=-1)


def alibi_slopes(n_heads: int) -> list[float]:
    """The per-head slopes of ALiBi (Press et al., 2022), as in the paper's reference code.

    For a power of two ``n`` the slopes are the geometric sequence ``2^(-8/n), 2^(-16/n), ..., 2^(-8)``. Otherwise
    they are the slopes of the largest power of two below ``n``, followed by every other slope of twice that power
    until there are ``n``.
    """
    if math.log2(n_heads).is_integer():
        start = 2.0 ** (-8.0 / n_heads)
        return [start ** (i + 1) for i in range(n_heads)]
    closest = 2 ** math.floor(math.log2(n_heads))
    return alibi_slopes(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


@register("position", "alibi")
class ALiBiPosition(Position):
    """Attention with linear biases: each head penalises a score by ``slope * distance`` (BLOOM, MPT).

    Args:
        n_heads: number of query heads; every head gets its own slope.
    """

    relative_bias = True  # the bias depends on key - query only (see Position)

    def __init__(self, *, n_heads: int) -> None:
        super().__init__()
        if n_heads <= 0:
            raise ValueError(f"alibi: n_heads must be positive, got {n_heads}")
        self.register_buffer("slopes", torch.tensor(alibi_slopes(n_heads)), persistent=False)

    def score_bias(self, q_pos: Tensor, k_pos: Tensor, *, causal: bool) -> Tensor:
        """q_pos: [Tq], k_pos: [Tk] -> [1, H, Tq, Tk].

        ``-slope * (q - k)`` when causal (keys after the query are masked anyway), ``-slope * |q - k|`` otherwise.
        """
        distance = q_pos[:, None] - k_pos[None, :]  # [Tq, Tk]
        if not causal:
            distance = distance.abs()
        return -(self.slopes[:, None, None] * distance)[None]


def t5_relative_bucket(
    relative_position: Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> Tensor:
    """T5's bucket of each relative position ``key - query`` (as Hugging Face's ``_relative_position_bucket``).

    Small distances get a bucket each; larger ones share logarithmically wider buckets up to ``max_distance``,
    beyond which all fall in the last bucket. Bidirectional bucketing spends half of the buckets on keys after
    the query; causal bucketing treats keys after the query as distance 0.

    Args:
        relative_position: integer tensor of ``key_position - query_position``, any shape.
        bidirectional: whether keys after the query get buckets of their own.
        num_buckets: the number of buckets.
        max_distance: the distance from which on all positions share the last bucket.

    Returns:
        Integer bucket indices in ``[0, num_buckets)``, shaped like ``relative_position``.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # log(0) = -inf for distance 0 is harmless: torch.where picks the exact bucket there.
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


@register("position", "t5_bias")
class T5RelativeBias(Position):
    """T5's learned relative position bias: one scalar per (bucket of ``key - query``, head), added to the scores.

    Args:
        n_heads: number of query heads.
        num_buckets: number of relative-position buckets, at least 2 (4 in an encoder, which halves them).
        max_distance: the distance from which on all positions share the last bucket; more than
            ``num_buckets // 2``.
    """

    hf_layout = {"relative_attention_bias": "table"}  # as Hugging Face checkpoints hold it (tfgraph.interop)
    relative_bias = True  # the bias depends on key - query only (see Position)

    def __init__(
        self,
        *,
        n_heads: int,
        num_buckets: Annotated[int, AtLeast(2)] = 32,
        max_distance: Annotated[int, AtLeast(1)] = 128,
    ) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, n_heads)  # named as in HF T5

    @staticmethod
    def check_args(*, num_buckets: int, max_distance: int, **_: Any) -> dict[str, str]:
        """The logarithmic buckets start at ``num_buckets // 2`` and must end beyond it at ``max_distance``."""
        if max_distance <= num_buckets // 2:
            return {
                "max_distance": f"expected more than num_buckets // 2 ({num_buckets // 2}), the distance where the "
                f"logarithmic buckets begin; got {max_distance}"
            }
        return {}

    def score_bias(self, q_pos: Tensor, k_pos: Tensor, *, causal: bool) -> Tensor:
        """q_pos: [Tq], k_pos: [Tk] -> [1, H, Tq, Tk]."""
        relative_position = k_pos[None, :] - q_pos[:, None]  # memory minus query, [Tq, Tk]
        bucket = t5_relative_bucket(
            relative_position, bidirectional=not causal, num_buckets=self.num_buckets, max_distance=self.max_distance
        )
        return self.relative_attention_bias(bucket).permute(2, 0, 1)[None]  # [Tq, Tk, H] -> [1, H, Tq, Tk]
