"""The machinery every check shares: the model under check, a check's outcome, the registry, the report, and
finding the layer-graph node to blame.

A check is a function ``(subject: Subject) -> Outcome`` registered under a name with :func:`register_check`; it
raises :class:`Skip` when it cannot apply to the subject (no KV cache in a bidirectional stack). :func:`run_checks`
runs the registered checks in order and turns each into a :class:`CheckResult` (pass, fail or skip, the measured
figure, the node blamed); a check that raises anything else fails with what it raised.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from tfgraph.graph import NodeSpec
from tfgraph.models import Stack, Transformer, build_model

Status = Literal["pass", "fail", "skip"]


class Skip(Exception):  # noqa: N818 (raised to say "skipped", not an error)
    """Raised by a check that does not apply to the subject; the message is the reason shown."""


@dataclass(kw_only=True)
class Finding:
    """What a check measured.

    Attributes:
        figure: the measured figure, short (``max |diff| before t: 0 (t = 3, 8 of 12)``); a skip's reason.
        value: the figure as a number where there is one (the largest difference, a count).
        blame: the layer-graph node (module name and config path) a failure traces back to, if found.
        detail: more of what went wrong (the graph breaks' reasons, the parameters without a gradient).
    """

    figure: str
    value: float | None = None
    blame: str | None = None
    detail: str = ""


@dataclass(kw_only=True)
class Outcome(Finding):
    """What a check function returns: whether the property holds, and the :class:`Finding`."""

    passed: bool


@dataclass(kw_only=True)
class CheckResult(Finding):
    """One check's line of the report: its name, ``pass``, ``fail`` or ``skip``, and the :class:`Finding`."""

    name: str
    status: Status


@dataclass(kw_only=True)
class Subject:
    """The model a check runs on, and how the checks drive it.

    Attributes:
        model: the model, in eval mode (a check that trains it restores the mode).
        model_cfg: its resolved model config as plain containers (default: ``model.config``); checks that
            rebuild the model (save/load, gradients) build from it.
        full_cfg: the config it was shrunk from (what ``tfgraph-show`` counts), or ``None``: ``model_cfg``.
        task_cfg: the task whose loss the gradient check backpropagates (``{name: causal_lm, ...}``), or
            ``None``: the topology's natural task (causal_lm, masked_lm, seq2seq).
        seq_len: the sequence length of the checks' inputs.
        batch: the rows of the checks' inputs (at least 2: padding needs a short row beside a long one).
        seed: seeds the inputs and rebuilt models.
        atol: the largest absolute difference two computations that should agree may show.
        compile_atol: the same for compiled against eager (a compiler may reorder floating-point sums).
        compile_backend: the ``torch.compile`` backend of the compile check (``inductor``, ``aot_eager``).
        new_tokens: the greedy tokens generated with and without the cache.
    """

    model: Transformer
    model_cfg: Mapping[str, Any] | None = None
    full_cfg: Mapping[str, Any] | None = None
    task_cfg: Mapping[str, Any] | None = None
    seq_len: int = 12
    batch: int = 2
    seed: int = 0
    atol: float = 1e-5
    compile_atol: float = 1e-4
    compile_backend: str = "inductor"
    new_tokens: int = 8

    def __post_init__(self) -> None:
        if self.model_cfg is None:
            self.model_cfg = self.model.config
        self.model.eval()

    @property
    def topology(self) -> str:
        return self.model.topology

    def tokens(self, batch: int, length: int, seed: int = 0) -> Tensor:
        """``[batch, length]`` random token ids (seeded by the subject's seed and ``seed``)."""
        generator = torch.Generator().manual_seed(self.seed * 1000 + seed)
        return torch.randint(0, self.model.vocab_size, (batch, length), generator=generator)

    def rebuild(self, seed: int) -> Transformer:
        """A fresh model of the same config, initialised from ``seed`` (eval mode)."""
        if self.model_cfg is None:
            raise Skip("the model was built by hand (no model config to rebuild it from)")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return build_model(self.model_cfg).eval()


def call(
    model: nn.Module,
    ids: Tensor,
    mask: Tensor | None = None,
    dec: Tensor | None = None,
    dec_mask: Tensor | None = None,
) -> Tensor:
    """The model call for any topology (an encoder_decoder decodes ``dec``, default: the inputs themselves)."""
    if getattr(model, "topology", None) == "encoder_decoder":
        dec = ids if dec is None else dec
        return model(ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    return model(ids, attention_mask=mask)


# ------------------------------------------------------------------------------------------------ the registry

CheckFunction = Callable[[Subject], Outcome]


@dataclass(frozen=True, kw_only=True)
class Check:
    """A registered check: its name, what it proves (one line, for the table's legend and ``--help``), its
    function."""

    name: str
    summary: str
    function: CheckFunction


CHECKS: dict[str, Check] = {}  # name -> check, in the order they run


def register_check(name: str, summary: str) -> Callable[[CheckFunction], CheckFunction]:
    """Decorator: register a check function under ``name``; checks run in the order they were registered.

    Example::

        @register_check("determinism", "a forward with dropout off gives the same output twice")
        def determinism(subject: Subject) -> Outcome: ...
    """

    def decorate(function: CheckFunction) -> CheckFunction:
        if name in CHECKS and CHECKS[name].function is not function:
            raise ValueError(f"a check named {name!r} is registered already ({CHECKS[name].function.__qualname__})")
        CHECKS[name] = Check(name=name, summary=summary, function=function)
        return function

    return decorate


def run_checks(subject: Subject, names: Sequence[str] | None = None) -> list[CheckResult]:
    """Run the named checks (default: all registered, in order) on ``subject``; one :class:`CheckResult` each.

    A check that raises :class:`Skip` is skipped with its reason; one that raises anything else fails, the error
    as its figure (a broken block that crashes a check fails it rather than the whole run).
    """
    results = []
    for name in CHECKS if names is None else names:
        check = CHECKS[name]
        with torch.random.fork_rng():
            torch.manual_seed(subject.seed)
            try:
                outcome = check.function(subject)
            except Skip as skip:
                results.append(CheckResult(name=name, status="skip", figure=str(skip)))
                continue
            except Exception as err:
                figure = f"raised {type(err).__name__}: {err}".splitlines()[0]
                outcome = Outcome(passed=False, figure=figure, detail=str(err))
        found = {key: value for key, value in asdict(outcome).items() if key != "passed"}
        results.append(CheckResult(name=name, status="pass" if outcome.passed else "fail", **found))
    return results


# ------------------------------------------------------------------------------------------------ the report


@dataclass
class CheckReport:
    """The results of a run of checks and what they ran on; ``str()`` is the table ``tfgraph-check`` prints."""

    results: list[CheckResult]
    model: str = ""  # what was checked, one line (the preset and the small sizes)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "fail"]

    @property
    def ok(self) -> bool:
        """Whether no check failed (skipped ones do not count against it)."""
        return not self.failed

    def __getitem__(self, name: str) -> CheckResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)

    def summary(self) -> str:
        counts = {s: sum(r.status == s for r in self.results) for s in ("pass", "fail", "skip")}
        return f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"

    def to_dict(self) -> dict[str, Any]:
        results = [{"name": r.name, "status": r.status, **asdict(r)} for r in self.results]  # name first
        return {"model": self.model, "ok": self.ok, "results": results}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        width = max([len("check"), *(len(r.name) for r in self.results)])
        indent = " " * (width + 10)  # under the figure
        lines = [f"{'check'.ljust(width)}  result  figure"]
        for r in self.results:
            lines.append(f"{r.name.ljust(width)}  {r.status.ljust(6)}  {r.figure}")
            if r.blame:
                lines.append(f"{indent}blame: {r.blame}")
            if r.status == "fail" and r.detail and r.detail != r.figure:
                lines += [f"{indent}{line}" for line in r.detail.splitlines()[:6]]
        lines.append("")
        if self.model:
            lines.append(self.model)
        lines.append(self.summary())
        return "\n".join(lines)


class ChecksFailed(Exception):  # noqa: N818 (reads as what happened)
    """Raised by ``tfgraph-check`` after its table when a check failed (exit code 1); names the failed checks."""

    def __init__(self, report: CheckReport) -> None:
        self.report = report
        names = ", ".join(r.name for r in report.failed)
        super().__init__(f"{len(report.failed)} check{'s' * (len(report.failed) != 1)} failed: {names}")


# ------------------------------------------------------------------------------------------------ blame


def layer_nodes(model: nn.Module) -> Iterator[tuple[str, nn.Module, NodeSpec]]:
    """Every node of every layer graph: ``(module name, its block, its spec)``, stack by stack in call order."""
    for stack_name in ("encoder", "decoder"):
        stack = getattr(model, stack_name, None)
        if isinstance(stack, Stack):
            for i, layer in enumerate(stack.layers):
                for node in layer.spec.nodes:
                    yield f"{stack_name}.layers.{i}.{node.name}", getattr(layer, node.name), node


def node_label(name: str, node: NodeSpec) -> str:
    """``decoder.layers.0.attn (model.layer.nodes.attn: attention peek_ahead at model.attention)``."""
    block = getattr(node.cls, "block_name", None) or node.cls.__name__
    kind = getattr(node.cls, "block_kind", None)
    where = f" at {node.source}" if node.source != node.path else ""
    return f"{name} ({node.path}: {kind + ' ' if kind else ''}{block}{where})"


def blame_of(model: nn.Module, module_name: str) -> str | None:
    """The label of the layer node that holds ``module_name`` (a parameter's or submodule's name), or None."""
    for name, _, node in layer_nodes(model):
        if module_name == name or module_name.startswith(name + "."):
            return node_label(name, node)
    return None


@contextmanager
def traced(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Record the output of every layer node while the block runs: ``{module name: output}``, in the order the
    nodes first ran (a node that runs again keeps its place and its latest output)."""
    outputs: dict[str, Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _args: Any, output: Any) -> None:
            if isinstance(output, Tensor):
                outputs[name] = output.detach().clone()

        return record

    handles = [block.register_forward_hook(hook(name)) for name, block, _ in layer_nodes(model)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def first_divergence(
    model: nn.Module,
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    *,
    atol: float,
    pick_a: Callable[[Tensor], Tensor] = lambda t: t,
    pick_b: Callable[[Tensor], Tensor] = lambda t: t,
) -> str | None:
    """The label of the first node (in call order) whose outputs in two traced runs differ by more than
    ``atol`` after ``pick_a``/``pick_b`` select the positions that should agree; None when none does."""
    labels = {name: node_label(name, node) for name, _, node in layer_nodes(model)}
    for name, out_a in a.items():
        if name not in b:
            continue
        x, y = pick_a(out_a), pick_b(b[name])
        if x.shape != y.shape or max_diff(x, y) > atol:
            return labels[name]
    return None


def max_diff(a: Tensor, b: Tensor) -> float:
    """The largest absolute difference (``inf`` where one is not finite and the other is, or shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    diff = (a.double() - b.double()).abs()
    same_nonfinite = (a == b) | (a.isnan() & b.isnan())
    return float(torch.where(same_nonfinite, torch.zeros_like(diff), diff).max())
