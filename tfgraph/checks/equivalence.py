"""The checks, in the order they run: each a function ``(Subject) -> Outcome`` registered by name.

Each computes one property two ways that must agree (the model with and without a later token changed, with and
without padding, with and without the cache, compiled and eager, before and after a save/load), measures the
largest difference, and on a failure re-runs both ways with forward hooks on the layer-graph nodes to name the
first node whose output parts: the block to blame and its config path.
"""

from __future__ import annotations

import inspect
import io
import string
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from tfgraph.checks.base import (
    Outcome,
    Skip,
    Subject,
    blame_of,
    call,
    first_divergence,
    layer_nodes,
    max_diff,
    node_label,
    register_check,
    traced,
)

CAUSALITY_POSITIONS = (1 / 4, 2 / 3)  # where a token is changed, as fractions of the sequence (3 and 8 of 12)
SHORT_BY = 5  # the padded row of the padding checks is this many tokens shorter
PAD_TOKEN = 7  # what the padding holds: a real token id, so that only the mask can hide it
NATURAL_TASKS = {"decoder_only": "causal_lm", "encoder_only": "masked_lm", "encoder_decoder": "seq2seq"}


def _fmt(value: float) -> str:
    return "0" if value == 0 else f"{value:.1e}"


# ------------------------------------------------------------------------------------------------ forward


@register_check("forward", "the model call returns [B, T, vocab] logits (d_model states for encoder_only), finite")
@torch.no_grad()
def forward(subject: Subject) -> Outcome:
    """The output's shape and that every value is finite; blames the first node with a non-finite output."""
    model, t = subject.model, subject.seq_len
    ids = subject.tokens(subject.batch, t)
    with traced(model) as outputs:
        out = call(model, ids)
    width = model.d_model if subject.topology == "encoder_only" else model.vocab_size
    expected = (subject.batch, t, width)
    if tuple(out.shape) != expected:
        return Outcome(passed=False, figure=f"output {list(out.shape)}, expected {list(expected)}")
    finite = bool(torch.isfinite(out).all())
    if not finite:
        labels = {name: node_label(name, node) for name, _, node in layer_nodes(model)}
        bad = next((name for name, o in outputs.items() if not torch.isfinite(o).all()), None)
        return Outcome(passed=False, figure=f"output {list(out.shape)} has non-finite values", blame=labels.get(bad))
    return Outcome(passed=True, figure=f"output {list(out.shape)}, all finite")


# ------------------------------------------------------------------------------------------------ causality


@register_check("causality", "a change at position t leaves every output before t unchanged (causal stacks)")
@torch.no_grad()
def causality(subject: Subject) -> Outcome:
    """Change the (decoder) token at a few positions t: outputs before t must not move, and output t must."""
    if subject.topology == "encoder_only":
        raise Skip("encoder_only: a bidirectional stack, every position reads every other")
    model, length = subject.model, subject.seq_len
    if length < 2:
        raise Skip(f"seq_len {length}: no earlier position to watch")
    ids = subject.tokens(subject.batch, length)
    positions = sorted({max(1, min(length - 1, round(f * length))) for f in CAUSALITY_POSITIONS})

    def run(dec: Tensor) -> Tensor:
        return call(model, ids, dec=dec) if subject.topology == "encoder_decoder" else call(model, dec)

    out = run(ids)
    worst = 0.0
    for t in positions:
        changed = ids.clone()
        changed[:, t] = (changed[:, t] + 1) % model.vocab_size
        out2 = run(changed)
        before = max_diff(out2[:, :t], out[:, :t])
        worst = max(worst, before)
        if before > subject.atol:
            with traced(model) as a:
                run(ids)
            with traced(model) as b:
                run(changed)
            pick = lambda x, t=t: x[:, :t]  # noqa: E731
            blame = first_divergence(model, a, b, atol=subject.atol, pick_a=pick, pick_b=pick)
            figure = f"max |diff| before t={t}: {_fmt(before)} after changing token {t}"
            return Outcome(passed=False, figure=figure, value=before, blame=blame)
        if max_diff(out2[:, t:], out[:, t:]) <= subject.atol:
            return Outcome(
                passed=False, figure=f"changing token {t} changes no output at or after it: the input is not read"
            )
    where = ", ".join(map(str, positions))
    return Outcome(passed=True, figure=f"max |diff| before t: {_fmt(worst)} (t = {where} of {length})", value=worst)


# ------------------------------------------------------------------------------------------------ padding


def _padding_outcome(
    subject: Subject,
    worst: float,
    side: str,
    lengths: tuple[int, ...],
    blame: Callable[[], str | None],
) -> Outcome:
    figure = f"max |diff| at real positions: {_fmt(worst)} (rows of {', '.join(map(str, lengths))}, {side} padded)"
    if worst <= subject.atol:
        return Outcome(passed=True, figure=figure, value=worst)
    return Outcome(passed=False, figure=figure, value=worst, blame=blame())


@register_check("padding_right", "right padding leaves each row's real positions as the row alone computes them")
@torch.no_grad()
def padding_right(subject: Subject) -> Outcome:
    """Row 1 is ``seq_len - 5`` real tokens then padding holding real ids: its real positions match the row run
    alone, and the unpadded row 0 matches itself alone."""
    model, length = subject.model, subject.seq_len
    short = max(1, length - SHORT_BY)
    ids = subject.tokens(2, length, seed=1)
    mask = torch.tensor([[1] * length, [1] * short + [0] * (length - short)])
    ids = ids.masked_fill(mask == 0, PAD_TOKEN % model.vocab_size)
    padded = call(model, ids, mask, dec=ids, dec_mask=mask)
    alone = call(model, ids[1:, :short])
    full = call(model, ids[:1])
    worst = max(max_diff(padded[1:, :short], alone), max_diff(padded[:1], full))

    def blame() -> str | None:
        with traced(model) as a:
            call(model, ids, mask, dec=ids, dec_mask=mask)
        with traced(model) as b:
            call(model, ids[1:, :short])
        return first_divergence(model, a, b, atol=subject.atol, pick_a=lambda x: x[1:, :short])

    return _padding_outcome(subject, worst, "right", (length, short), blame)


@register_check("padding_left", "left padding (with positions per row) leaves each row as it computes alone")
@torch.no_grad()
def padding_left(subject: Subject) -> Outcome:
    """A decoder_only batch left-padded, positions counted per row from its first real token: each row's real
    positions match the row alone."""
    if subject.topology != "decoder_only":
        raise Skip(
            f"{subject.topology}: the model call takes no position_ids, so a left-padded row starts at another "
            "position; its rows are padded on the right"
        )
    model, length = subject.model, subject.seq_len
    short = max(1, length - SHORT_BY)
    ids = subject.tokens(2, length, seed=2)
    mask = torch.tensor([[1] * length, [0] * (length - short) + [1] * short])
    ids = ids.masked_fill(mask == 0, PAD_TOKEN % model.vocab_size)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    padded = model(ids, mask, position_ids=positions)
    alone = model(ids[1:, length - short :])
    worst = max(max_diff(padded[1:, length - short :], alone), max_diff(padded[:1], model(ids[:1])))

    def blame() -> str | None:
        with traced(model) as a:
            model(ids, mask, position_ids=positions)
        with traced(model) as b:
            model(ids[1:, length - short :])
        return first_divergence(model, a, b, atol=subject.atol, pick_a=lambda x: x[1:, length - short :])

    return _padding_outcome(subject, worst, "left", (length, short), blame)


# ------------------------------------------------------------------------------------------------ the KV cache


@register_check("cache", "greedy generation with the KV cache gives the tokens and per-step logits of without")
@torch.no_grad()
def cache(subject: Subject) -> Outcome:
    """Greedy decoding with and without the cache: the same tokens, per-step logits within ``atol``."""
    from tfgraph.decoding import generate

    model = subject.model
    if subject.topology == "encoder_only":
        raise Skip("encoder_only: a bidirectional stack keeps no KV cache (it re-reads everything)")
    try:
        model.new_cache(1, 1)
    except ValueError as err:
        raise Skip(str(err)) from None
    prompt_len = max(1, subject.seq_len - SHORT_BY)
    prompt = subject.tokens(subject.batch, prompt_len, seed=3)
    mask = None
    start = {}
    if subject.topology == "encoder_decoder":  # a padded source exercises the cross-attention mask too
        mask = torch.ones_like(prompt)
        mask[-1, max(1, prompt_len - 2) :] = 0
        start = {"decoder_start_token_id": 0}
    options = dict(max_new_tokens=subject.new_tokens, output_logits=True, **start)
    cached = generate(model, prompt, mask, use_cache=True, **options)
    full = generate(model, prompt, mask, use_cache=False, **options)
    same = cached.sequences == full.sequences
    worst = max_diff(cached.logits, full.logits)
    figure = (
        f"greedy tokens equal: {int(same.sum())}/{same.numel()}, max |diff| of per-step logits: {_fmt(worst)} "
        f"({subject.new_tokens} steps)"
    )
    if bool(same.all()) and worst <= subject.atol:
        return Outcome(passed=True, figure=figure, value=worst)
    steps = (cached.logits - full.logits).abs().flatten(2).amax(dim=(0, 2))
    step = int((steps > subject.atol).nonzero()[0]) if bool((steps > subject.atol).any()) else 0
    blame = _cache_blame(subject, prompt, mask, full.sequences[:, :step])
    return Outcome(passed=False, figure=figure, value=worst, blame=blame)


def _cache_blame(subject: Subject, prompt: Tensor, mask: Tensor | None, generated: Tensor) -> str | None:
    """Replay the first diverging step: one forward over everything vs the cache filled to the last token and
    one cached step; the first node whose output at that last position differs."""
    model = subject.model
    if subject.topology == "encoder_decoder":
        memory = model.encode(prompt, mask)
        tokens = torch.cat([torch.zeros_like(prompt[:, :1]), generated], dim=1)

        def run(x: Tensor, kv: Any = None) -> Tensor:
            return model.decode(x, memory, mask, cache=kv)
    else:
        tokens = torch.cat([prompt, generated], dim=1)

        def run(x: Tensor, kv: Any = None) -> Tensor:
            return model(x, cache=kv)

    with traced(model) as full:
        run(tokens)
    kv = model.new_cache(tokens.shape[0], tokens.shape[1])
    if tokens.shape[1] > 1:
        run(tokens[:, :-1], kv)
    with traced(model) as step:
        run(tokens[:, -1:], kv)
    return first_divergence(model, full, step, atol=subject.atol, pick_a=lambda x: x[:, -1:])


# ------------------------------------------------------------------------------------------------ attention backends


@register_check("backends", "every attention kernel (sdpa, flex) gives the math reference's output, padded")
@torch.no_grad()
def backends(subject: Subject) -> Outcome:
    """The model's output, a row right-padded, under ``model.attention_backend`` ``sdpa`` and ``flex`` (unfused: the
    same numbers as compiled, without compiling) against ``math``; the stacks' own backend is restored after."""
    from tfgraph.blocks import kernels
    from tfgraph.models.transformer import Stack

    model, length = subject.model, subject.seq_len
    stacks = {m: m.attention_backend for m in model.modules() if isinstance(m, Stack)}
    if not stacks:
        raise Skip("no stack of layers whose attention kernel could be chosen")
    short = max(1, length - SHORT_BY)
    ids = subject.tokens(2, length, seed=5)
    mask = torch.tensor([[1] * length, [1] * short + [0] * (length - short)])
    outputs: dict[str, Tensor] = {}
    traces: dict[str, dict[str, Tensor]] = {}
    compiled = kernels.COMPILE_FLEX
    kernels.COMPILE_FLEX = False
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "flex_attention called without torch.compile")
            for backend in ("math", "sdpa", "flex"):
                for stack in stacks:
                    stack.attention_backend = backend
                with traced(model) as traces[backend]:
                    outputs[backend] = call(model, ids, mask, dec=ids, dec_mask=mask)
    finally:
        kernels.COMPILE_FLEX = compiled
        for stack, backend in stacks.items():
            stack.attention_backend = backend
    diffs = {backend: max_diff(outputs[backend], outputs["math"]) for backend in ("sdpa", "flex")}
    figure = (
        "max |diff| vs math: " + ", ".join(f"{b} {_fmt(d)}" for b, d in diffs.items()) + f" (rows of {length}, {short})"
    )
    worst_backend = max(diffs, key=diffs.get)
    worst = diffs[worst_backend]
    if worst <= subject.atol:
        return Outcome(passed=True, figure=figure, value=worst)
    blame = first_divergence(model, traces["math"], traces[worst_backend], atol=subject.atol)
    return Outcome(passed=False, figure=figure, value=worst, blame=blame)


# ------------------------------------------------------------------------------------------------ compile


def _compile_inputs(subject: Subject) -> dict[str, Tensor]:
    ids = subject.tokens(subject.batch, subject.seq_len, seed=4)
    mask = torch.ones_like(ids)
    mask[-1, max(1, subject.seq_len - SHORT_BY) :] = 0  # the masked path, not only the fast one
    inputs = {"input_ids": ids, "attention_mask": mask}
    if subject.topology == "encoder_decoder":
        inputs["decoder_input_ids"] = ids
    return inputs


@register_check("compile", "torch.compile(fullgraph=True) traces with zero graph breaks and computes what eager does")
@torch.no_grad()
def compiled(subject: Subject) -> Outcome:
    """Count the graph breaks (``torch._dynamo.explain``), then compare a ``fullgraph=True`` compile's output
    with eager; a break is blamed on the node whose block's code it happened in."""
    import torch._dynamo

    model = subject.model
    inputs = _compile_inputs(subject)
    torch._dynamo.reset()
    try:
        explain = torch._dynamo.explain(model)(**inputs)
        breaks = explain.graph_break_count
        if breaks:
            reasons = [str(reason.reason).splitlines()[0] for reason in explain.break_reasons]
            frames = [frame for reason in explain.break_reasons for frame in reason.user_stack]
            return Outcome(
                passed=False,
                figure=f"{breaks} graph break{'s' * (breaks != 1)} (fullgraph=True cannot compile)",
                value=float(breaks),
                blame=_break_blame(model, frames),
                detail="\n".join(dict.fromkeys(reasons)),
            )
        compiled = torch.compile(model, fullgraph=True, backend=subject.compile_backend)
        worst = max_diff(compiled(**inputs), model(**inputs))
    finally:
        torch._dynamo.reset()
    figure = f"0 graph breaks; max |diff| compiled vs eager: {_fmt(worst)} (backend {subject.compile_backend})"
    return Outcome(passed=worst <= subject.compile_atol, figure=figure, value=worst)


def _break_blame(model: nn.Module, frames: list[Any]) -> str | None:
    """The node whose block's ``forward`` (or a method of its class) holds the innermost frame of a graph break."""
    spans = []
    for name, block, node in layer_nodes(model):
        for cls in type(block).__mro__:
            if cls.__module__.startswith("torch."):
                continue
            try:
                lines, first = inspect.getsourcelines(cls)
                spans.append((inspect.getsourcefile(cls), first, first + len(lines), node_label(name, node)))
            except (OSError, TypeError):
                continue
    for frame in reversed(frames):
        for path, first, last, label in spans:
            if frame.filename == path and first <= (frame.lineno or 0) < last:
                return label
    return None


# ------------------------------------------------------------------------------------------------ save / load


@register_check("state_dict", "the state dict saved and loaded (weights_only) into a fresh model computes the same")
@torch.no_grad()
def state_dict(subject: Subject) -> Outcome:
    """Save the state dict, load it with ``torch.load(weights_only=True)`` into a model built from another seed:
    every key matches and the output is identical."""
    model = subject.model
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = subject.rebuild(subject.seed + 1)
    result = fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=False)
    wrong = [*result.missing_keys, *result.unexpected_keys]
    if wrong:
        label = "missing" if result.missing_keys else "unexpected"
        figure = f"{len(wrong)} keys {label}: {', '.join(wrong[:3])}"
        return Outcome(passed=False, figure=figure, value=float(len(wrong)), blame=blame_of(model, wrong[0]))
    ids = subject.tokens(subject.batch, subject.seq_len, seed=5)
    worst = max_diff(call(fresh, ids), call(model, ids))
    n = len(model.state_dict())
    figure = f"{n} tensors round-tripped; max |diff| of the reloaded model's output: {_fmt(worst)}"
    if worst == 0:
        return Outcome(passed=True, figure=figure, value=worst)
    with traced(model) as a:
        call(model, ids)
    with traced(fresh) as b:
        call(fresh, ids)
    return Outcome(passed=False, figure=figure, value=worst, blame=first_divergence(model, a, b, atol=0.0))


# ------------------------------------------------------------------------------------------------ gradients


@register_check("gradients", "every trainable parameter gets a finite, non-zero gradient from the task's loss")
def gradients(subject: Subject) -> Outcome:
    """One training step's loss of the task (``subject.task_cfg``, or the topology's natural task) on random
    tokens, backpropagated: each trainable parameter's gradient exists, is finite and is not all zero."""
    task = _task(subject)
    task.train()
    batch = _task_batch(subject, task)
    with warnings.catch_warnings():  # the task logs its loss; outside a Trainer that is a warning and a no-op
        warnings.simplefilter("ignore")
        loss = task.training_step(batch, 0)
    loss.backward()
    problems = []
    params = [(name, p) for name, p in task.named_parameters() if p.requires_grad]
    for name, p in params:
        if p.grad is None:
            problems.append((name, "no gradient"))
        elif not bool(torch.isfinite(p.grad).all()):
            problems.append((name, "non-finite gradient"))
        elif not bool(p.grad.any()):
            problems.append((name, "zero gradient"))
    good = len(params) - len(problems)
    figure = f"{good}/{len(params)} parameters with a finite, non-zero gradient (task {task.name}, loss {loss:.3g})"
    if not problems:
        return Outcome(passed=True, figure=figure, value=float(good))
    first = problems[0][0].removeprefix("model.")
    detail = "\n".join(f"{name}: {why}" for name, why in problems)
    blame = blame_of(task.model, first) or problems[0][0]
    return Outcome(passed=False, figure=figure, value=float(good), blame=blame, detail=detail)


def _task(subject: Subject) -> Any:
    from tfgraph.data.tokenizers import SPECIAL_TOKENS, CharTokenizer
    from tfgraph.tasks import build_task

    if subject.model_cfg is None:
        raise Skip("the model was built by hand (no model config for the task to build it from)")
    task_cfg = dict(subject.task_cfg or {"name": NATURAL_TASKS[subject.topology]})
    vocab = subject.model.vocab_size
    n_chars = max(1, min(26, vocab - len(SPECIAL_TOKENS)))  # a tokenizer that fits the model's vocabulary
    tokenizer = CharTokenizer(chars=list(string.ascii_lowercase[:n_chars]))
    labels = {"sequence_classification": ["no", "yes"], "token_classification": ["O", "B-X", "I-X"]}
    with torch.random.fork_rng():
        torch.manual_seed(subject.seed)
        return build_task(
            task_cfg,
            model=dict(subject.model_cfg),
            tokenizer=tokenizer.to_json(),
            label_names=labels.get(task_cfg.get("name")),
            optimizer=None,
            scheduler=None,
            data=None,
        )


def _task_batch(subject: Subject, task: Any) -> dict[str, Tensor]:
    """A batch of random tokens the task reads as its data modules give it (right padding in the last row)."""
    rows, length = max(4, subject.batch), max(2, subject.seq_len)
    generator = torch.Generator().manual_seed(subject.seed + 6)
    low, high = len(task.tokenizer.special_ids), task.tokenizer.vocab_size  # the tokens of text, no specials
    ids = torch.randint(low, high, (rows, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[-1, max(2, length - SHORT_BY) :] = 0
    batch = {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}
    name = task.name
    if name == "seq2seq":
        batch["labels"] = torch.randint(low, high, (rows, max(2, length // 2)), generator=generator)
    elif name == "sequence_classification":
        batch["labels"] = torch.arange(rows) % len(task.label_names)
    elif name == "token_classification":
        batch["labels"] = (torch.arange(length).expand(rows, length) % len(task.label_names)).masked_fill(
            mask == 0, -100
        )
    return batch


# ------------------------------------------------------------------------------------------------ determinism


@register_check("determinism", "a forward with dropout off (eval mode) gives exactly the same output twice")
@torch.no_grad()
def determinism(subject: Subject) -> Outcome:
    """Two eval-mode forwards of the same tokens: identical outputs; blames the first node that differs."""
    model = subject.model
    ids = subject.tokens(subject.batch, subject.seq_len, seed=7)
    with traced(model) as a:
        first = call(model, ids)
    with traced(model) as b:
        second = call(model, ids)
    worst = max_diff(first, second)
    figure = f"max |diff| between two forwards: {_fmt(worst)}"
    if worst == 0:
        return Outcome(passed=True, figure=figure, value=worst)
    return Outcome(passed=False, figure=figure, value=worst, blame=first_divergence(model, a, b, atol=0.0))


# ------------------------------------------------------------------------------------------------ counts


@register_check("counts", "parameters and forward FLOPs per token as tfgraph-show prints them (counted on meta)")
@torch.no_grad()
def counts(subject: Subject) -> Outcome:
    """The full-size config's ``params: N`` and FLOPs per token, as ``tfgraph-show`` counts them on the meta
    device; fails when the meta count of the small config disagrees with the model actually built."""
    from tfgraph.flops import count_flops, meta_model
    from tfgraph.show import _flops_line

    if subject.model_cfg is None:
        raise Skip("the model was built by hand (no model config to count from)")
    full_cfg = subject.full_cfg or subject.model_cfg
    full = meta_model(full_cfg)
    line = _flops_line(count_flops(full, full_cfg)).replace("forward FLOPs per token: ", "FLOPs/token: ")
    meta_small = meta_model(subject.model_cfg).num_parameters()
    real_small = subject.model.num_parameters()
    figure = f"params: {full.num_parameters()}; {line}"
    if meta_small != real_small:
        return Outcome(
            passed=False,
            figure=f"the meta device counts {meta_small} parameters, the built model has {real_small}",
            value=float(real_small - meta_small),
            detail=figure,
        )
    return Outcome(passed=True, figure=figure, value=float(full.num_parameters()))


# The Hugging Face export round trip runs after these (tfgraph.checks.hf_export; see tfgraph.checks.CHECK_MODULES).
