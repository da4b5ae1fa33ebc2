"""The settings of :func:`tfgraph.decoding.generate`, in one table.

:class:`DecodingOptions` is the table: a frozen dataclass whose fields are ``generate``'s keyword arguments, in its
order and with its defaults, each field described by an :class:`Option` (:data:`OPTIONS`): the strategies it
applies to, what its value must be, what an unset one means, whether ``tfgraph-generate`` takes it as a config key
(and the type that key's value must have), and what it does. From the table come

- the checks (:meth:`DecodingOptions.problems`, :func:`check_settings`): a value outside its range, a setting given
  under a strategy it does not apply to (``top_k`` with ``greedy``), and the relations between settings;
- the defaults a strategy gives an unset option (beam search: 4 beams; :meth:`DecodingOptions.resolved`);
- the keys of ``tfgraph-generate`` and their types (:data:`COMMAND_OPTIONS`, read by :mod:`tfgraph.inference`);
- the ``Args`` of ``generate``'s docstring (:func:`options_doc`).

Everything here runs once per call, before the first token; the decoding loops read plain attributes.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Annotated, Any, Literal

import torch
from torch import Tensor

from tfgraph.registry import Finite, Positive

Strategy = Literal["greedy", "sample", "beam"]
STRATEGIES: tuple[Strategy, ...] = ("greedy", "sample", "beam")
CpuLinear = Literal["auto", "onednn", "pytorch"]  # the kernel of a float32 CPU model's linear layers
CPU_LINEAR: tuple[CpuLinear, ...] = ("auto", "onednn", "pytorch")
ANY: tuple[Strategy, ...] = STRATEGIES
SAMPLE: tuple[Strategy, ...] = ("sample",)
BEAM: tuple[Strategy, ...] = ("beam",)
STEPWISE: tuple[Strategy, ...] = ("greedy", "sample")  # a token per row per step, final as soon as it is chosen
# the types of tfgraph-generate's config values, checked as the registry checks block arguments (a command line
# gives text: Hydra reads max_new_tokens=abc as 'abc')
COUNT = Annotated[int, Positive]
NUMBER = Annotated[float, Finite]


@dataclass(frozen=True)
class Rule:
    """What a given value must be: ``allows(value)``, or the problem ``"{name} {must}, got {value}"``."""

    allows: Callable[[Any], bool]
    must: str


AT_LEAST_ONE = Rule(lambda n: n >= 1, "must be at least 1")


@dataclass(frozen=True)
class Option:
    """One row of the table: a keyword argument of :func:`~tfgraph.decoding.generate`.

    Attributes:
        name: the keyword (and the name of ``tfgraph-generate``'s key).
        default: its value when not given (``dataclasses.MISSING``: it must be given).
        applies: the strategies it applies to; a value other than ``default`` under another strategy is refused.
        rule: what a given value (not ``None``) must be under the strategies it applies to; ``None``: anything.
        unset_means: what ``None`` stands for under those strategies (``num_beams``: 4), or ``None``.
        why: why it needs the strategies it applies to, when they are several (said with the refusal).
        named: how the refusal names a value given where it does not apply (default: ``name``).
        key: ``tfgraph-generate`` takes it as a config key, passed on when set (not null), whose value must be of
            this type (checked before ``rule``; ``Any``: the rule only); ``None``: no key of the command.
        quiet_elsewhere: ``tfgraph-generate`` drops the key under a strategy it does not apply to instead of
            refusing it (``seed``: greedy and beam draw nothing, so a config's seed means nothing to them).
        doc: what it does (the line of ``generate``'s docstring).
    """

    name: str
    default: Any
    applies: tuple[Strategy, ...]
    rule: Rule | None
    unset_means: Any
    why: str
    named: str
    key: Any
    quiet_elsewhere: bool
    doc: str

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def is_set(self, value: Any) -> bool:
        """Whether ``value`` differs from the default (a sampling setting given to greedy decoding is an error)."""
        return value is not None if self.default is None else value != self.default


def _option(
    default: Any = MISSING,
    *,
    doc: str,
    applies: tuple[Strategy, ...] = ANY,
    rule: Rule | None = None,
    unset_means: Any = None,
    why: str = "",
    named: str = "",
    key: Any = None,
    quiet_elsewhere: bool = False,
) -> Any:
    """A field of :class:`DecodingOptions` and its row of the table (see :class:`Option`)."""
    about = dict(applies=applies, rule=rule, unset_means=unset_means, why=why, named=named, key=key)
    about |= dict(quiet_elsewhere=quiet_elsewhere, doc=doc)
    return field(default=default, metadata={"option": about})


@dataclass(frozen=True)
class DecodingOptions:
    """The settings of one :func:`~tfgraph.decoding.generate` call, a field each (each field's :class:`Option` in
    :data:`OPTIONS`). Building one checks nothing: :meth:`problems` does, and :meth:`resolved` fills in what an
    unset option means under the strategy."""

    max_new_tokens: int = _option(doc="the most tokens to generate per row.", rule=AT_LEAST_ONE, key=COUNT)
    strategy: Strategy = _option(
        "greedy",
        doc='``"greedy"`` (the most likely token), ``"sample"`` (draw from the processed distribution) or '
        '``"beam"`` (beam search).',
        rule=Rule(lambda s: s in STRATEGIES, "must be 'greedy', 'sample' or 'beam'"),
        key=Any,
    )
    use_cache: bool = _option(
        True,
        doc="keep a KV cache and feed only each new token; ``False`` re-runs the whole sequence every step.",
        key=bool,
    )
    temperature: float = _option(
        1.0,
        doc="sample only: divides the logits (> 0).",
        applies=SAMPLE,
        rule=Rule(lambda t: t > 0, "must be positive (for the most likely token use 'greedy')"),
        key=NUMBER,
    )
    top_k: int | None = _option(
        None,
        doc="sample only: keep the k most likely tokens.",
        applies=SAMPLE,
        rule=AT_LEAST_ONE,
        key=COUNT,
    )
    top_p: float | None = _option(
        None,
        doc="sample only: keep the nucleus of probability mass ``top_p``.",
        applies=SAMPLE,
        rule=Rule(lambda p: 0 < p <= 1, "must be in (0, 1]"),
        key=NUMBER,
    )
    min_p: float | None = _option(
        None,
        doc="sample only: keep tokens at least ``min_p`` times as likely as the most likely one.",
        applies=SAMPLE,
        rule=Rule(lambda p: 0 <= p <= 1, "must be in [0, 1]"),
        key=NUMBER,
    )
    repetition_penalty: float = _option(
        1.0,
        doc="> 0; tokens already in the row (prompt included) have positive logits divided by it and negative ones "
        "multiplied by it (1 = off).",
        rule=Rule(lambda p: p > 0, "must be positive"),
        key=NUMBER,
    )
    num_beams: int | None = _option(
        None,
        doc="beam only: beams per input (default 4).",
        applies=BEAM,
        rule=AT_LEAST_ONE,
        unset_means=4,
        key=COUNT,
    )
    length_penalty: float | None = _option(
        None,
        doc="beam only: a hypothesis scores ``sum log p / length ** length_penalty`` (default 1.0).",
        applies=BEAM,
        unset_means=1.0,
        key=NUMBER,
    )
    early_stopping: bool | Literal["never"] | None = _option(
        None,
        doc="beam only: ``True`` stops an input at ``num_beams`` finished hypotheses; ``False`` (default) also when "
        'no live beam can still win by the current length (a heuristic); ``"never"`` by the best length possible.',
        applies=BEAM,
        rule=Rule(lambda e: e in (True, False, "never"), "must be True, False or 'never'"),
        unset_means=False,
        key=Any,
    )
    num_return_sequences: int = _option(
        1,
        doc="sequences per input (beam: the n best, at most ``num_beams``; sample: independent draws).",
        applies=("sample", "beam"),
        rule=AT_LEAST_ONE,
        why="greedy has one answer",
        named="num_return_sequences > 1",
        key=COUNT,
    )
    eos_token_id: int | Sequence[int] | None = _option(
        None, doc="the stop token(s): a row that produces one is finished (the stop token is kept; then ``pad``)."
    )
    pad_token_id: int | None = _option(None, doc="what finished rows hold; default the first stop token (or 0).")
    decoder_start_token_id: int | None = _option(None, doc="encoder-decoder only: the decoder's first token.")
    seed: int | None = _option(
        None,
        doc="sample only: seeds a fresh ``torch.Generator`` (reproducible draws).",
        applies=SAMPLE,
        key=int,
        quiet_elsewhere=True,
    )
    generator: torch.Generator | None = _option(
        None, doc="sample only: the generator to draw with (instead of ``seed``).", applies=SAMPLE
    )
    streamer: Callable[[Tensor], None] | None = _option(
        None,
        doc="greedy and sample: called after each step with the new tokens [B * num_return_sequences].",
        applies=STEPWISE,
        why="beams change until the end",
    )
    output_logits: bool = _option(
        False,
        doc="greedy and sample: also return every step's logits.",
        applies=STEPWISE,
        why="beams change until the end",
    )
    cpu_linear: CpuLinear = _option(
        "auto",
        doc='float32 CPU models: the kernel of the linear layers, ``"auto"`` (the faster of the two on this machine, '
        "timed the first time a model of these shapes generates and again when the steps drift far from that timing, "
        ':mod:`~tfgraph.decoding.cpu`), ``"onednn"`` or ``"pytorch"`` (the results differ by float rounding only).',
        rule=Rule(lambda k: k in CPU_LINEAR, "must be 'auto', 'onednn' or 'pytorch'"),
        key=Any,
    )
    compile: bool = _option(
        False,
        doc="run each one-token decode step as one ``torch.compile`` graph over a static KV cache (the first call "
        "for a model, batch and cache size compiles, seconds; the tokens are those of the eager step). Off by "
        "default: it pays back only over many thousand tokens (:mod:`~tfgraph.decoding.session`).",
        key=bool,
    )

    @classmethod
    def pick(cls, arguments: Mapping[str, Any]) -> DecodingOptions:
        """The options among a call's ``arguments`` (``generate``'s ``locals()``: its keywords are the fields)."""
        return cls(**{option.name: arguments[option.name] for option in OPTIONS if option.name in arguments})

    @property
    def rows_per_input(self) -> int:
        """How many rows each input becomes: its beams, or its sequences (call on :meth:`resolved` options)."""
        return self.num_beams if self.strategy == "beam" else self.num_return_sequences

    def resolved(self) -> DecodingOptions:
        """These options with each unset one that applies to the strategy as what it stands for (4 beams, ...)."""
        return replace(self, **{o.name: o.unset_means for o in self._unset_with_meaning()})

    def problems(self) -> list[tuple[str, str]]:
        """Every setting that cannot work or would be silently ignored: ``(option, message)`` pairs, in the order
        of the table: settings given to a strategy they do not apply to, values outside their range, then (when
        each value is fine alone) the relations between settings."""
        if self.strategy not in STRATEGIES:
            return [("strategy", _broken(OPTION["strategy"], self.strategy))]
        found = self._misplaced()
        found += [
            (o.name, _broken(o, value))
            for o in OPTIONS
            if o.rule is not None
            and self.strategy in o.applies
            and (value := getattr(self, o.name)) is not None
            and not o.rule.allows(value)
        ]
        return found or self.resolved()._relations()

    def check(self) -> None:
        """Raise the first of :meth:`problems` as a ``ValueError`` (its message names the setting)."""
        found = self.problems()
        if found:
            raise ValueError(found[0][1])

    def _unset_with_meaning(self) -> list[Option]:
        return [
            o
            for o in OPTIONS
            if o.unset_means is not None and self.strategy in o.applies and getattr(self, o.name) is None
        ]

    def _misplaced(self) -> list[tuple[str, str]]:
        """One problem for each group of options (by the strategies they apply to) given where they do not apply."""
        groups: dict[tuple[Strategy, ...], list[Option]] = {}
        for o in OPTIONS:
            if self.strategy not in o.applies and o.is_set(getattr(self, o.name)):
                groups.setdefault(o.applies, []).append(o)
        found = []
        for applies, given in groups.items():
            if len(applies) == 1:
                names = ", ".join(o.name for o in given)
                verb = "applies" if len(given) == 1 else "apply"
                message = f"{names} {verb} only to strategy={applies[0]!r}, not {self.strategy!r}"
            else:
                names = " and ".join(o.named or o.name for o in given)
                need = "needs" if len(given) == 1 else "need"
                message = f"{names} {need} strategy {' or '.join(map(repr, applies))} ({given[0].why})"
            found.append((given[0].name, message))
        return found

    def _relations(self) -> list[tuple[str, str]]:
        """The settings that are fine alone but not together (of :meth:`resolved` options)."""
        if self.strategy == "sample" and self.seed is not None and self.generator is not None:
            return [("seed", "give either seed or generator, not both")]
        if self.compile and not self.use_cache:
            return [("compile", "compile=True compiles the cached decode step: it needs use_cache=True")]
        if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
            message = f"num_return_sequences must be between 1 and num_beams={self.num_beams}"
            return [("num_return_sequences", message)]
        return []


def _broken(option: Option, value: Any) -> str:
    shown = repr(value) if isinstance(value, str) else value
    return f"{option.name} {option.rule.must}, got {shown}"


OPTIONS: tuple[Option, ...] = tuple(
    Option(name=f.name, default=f.default, **f.metadata["option"]) for f in fields(DecodingOptions)
)
"""The table: an :class:`Option` per keyword of :func:`~tfgraph.decoding.generate`, in its order."""
OPTION: dict[str, Option] = {o.name: o for o in OPTIONS}
COMMAND_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.key is not None)
"""The decoding keys of ``tfgraph-generate`` (``conf/generate.yaml``)."""


def check_settings(**settings: Any) -> None:
    """Refuse :func:`~tfgraph.decoding.generate` settings that cannot work or would be silently ignored, before any
    model runs (``generate``'s keywords and defaults; ``max_new_tokens`` is required).

    Raises:
        TypeError: a keyword ``generate`` does not take, or no ``max_new_tokens``.
        ValueError: the first setting that cannot work, named in the message, with the reason.
    """
    DecodingOptions(**settings).check()


def options_doc(indent: str, width: int = 120) -> str:
    """The ``Args`` lines of the options, from the table: ``name: doc`` wrapped to ``width`` with a hanging indent;
    every line but the first starts with ``indent`` (the text takes the place of a ``{options}`` so indented)."""
    lines = []
    for o in OPTIONS:
        lines += textwrap.wrap(f"{o.name}: {o.doc}", width, initial_indent=indent, subsequent_indent=indent + "    ")
    return "\n".join(lines)[len(indent) :]
