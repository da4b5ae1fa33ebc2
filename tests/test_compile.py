"""``compile=true|layers``: a compiled training step computes the loss and gradients of the eager one, and every
preset with every option of the test matrix traces under ``torch.compile(fullgraph=True)`` without a graph break,
with and without padding (the default run checks each preset; ``-m slow`` the whole matrix and inductor)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tfgraph
from tests.conftest import SWAPPABLE_GROUPS, TINY_PRESETS, build, group_options, run, tiny_text_run
from tfgraph.tasks.base import compile_model

# the mixture of experts traces whole too: while compiling its dispatch is dense (static shapes; tfgraph.blocks.ffn)
MATRIX = [
    pytest.param(preset, group, option, id=f"{preset}-{group}={option}")
    for preset in TINY_PRESETS
    for group in SWAPPABLE_GROUPS
    for option in group_options(group)
]


def batch(padded: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    if not padded:
        return ids, None
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return ids, mask


def graph_breaks(model: torch.nn.Module, padded: bool) -> tuple[int, list]:
    torch._dynamo.reset()
    ids, mask = batch(padded)
    explain = torch._dynamo.explain(lambda i, m: run(model, i, m, dec=i, dec_mask=m))(ids, mask)
    return explain.graph_break_count, explain.break_reasons


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_every_preset_traces_without_graph_breaks(preset: str, padded: bool) -> None:
    count, reasons = graph_breaks(build([f"model={preset}", "model.n_layers=2"]).train(), padded)
    assert count == 0, reasons


@pytest.mark.slow
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize(("preset", "group", "option"), MATRIX)
def test_every_preset_with_every_option_traces_without_graph_breaks(preset, group, option, padded) -> None:
    model = build([f"model={preset}", f"model/{group}={option}", "model.max_len=64", "model.n_layers=2"]).train()
    count, reasons = graph_breaks(model, padded)
    assert count == 0, reasons


def test_activation_checkpointing_traces_without_graph_breaks() -> None:
    model = build(["model=llama_tiny", "model.n_layers=2", "model.activation_checkpointing=true"]).train()
    count, reasons = graph_breaks(model, padded=True)
    assert count == 0, reasons


def loss_and_grads(model: torch.nn.Module, padded: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ids, mask = batch(padded)
    model.zero_grad(set_to_none=True)
    out = run(model, ids, mask, dec=ids, dec_mask=mask)
    loss = torch.nn.functional.cross_entropy(out.flatten(0, 1).float(), ids.flatten()) if out.shape[-1] > 64 else None
    loss = out.float().pow(2).mean() if loss is None else loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def check_compiled_equals_eager(overrides: list[str], mode: bool | str, backend: str, tol: float) -> None:
    torch._dynamo.reset()
    model = build([*overrides, "model.n_layers=2"]).train()
    padded = overrides[0] != "model=gpt2_tiny"
    eager_loss, eager_grads = loss_and_grads(model, padded)
    compile_model(model, mode, backend=backend)
    names = [n for n, _ in model.named_parameters()]
    loss, grads = loss_and_grads(model, padded)
    assert [n for n, _ in model.named_parameters()] == names  # checkpoints keep their keys
    torch.testing.assert_close(loss, eager_loss, rtol=tol, atol=tol)
    assert grads.keys() == eager_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("mode", [True, "layers"], ids=["whole", "layers"])
@pytest.mark.parametrize("preset", ["gpt2_tiny", "t5_tiny"])
def test_a_compiled_step_traced_without_codegen_equals_eager(preset: str, mode: bool | str) -> None:
    """aot_eager: the graphs dynamo and AOTAutograd capture, run without inductor's code generation (fast)."""
    check_compiled_equals_eager([f"model={preset}"], mode, "aot_eager", 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [True, "layers"], ids=["whole", "layers"])
@pytest.mark.parametrize("preset", ["gpt2_tiny", "llama_tiny", "bert_tiny"])
def test_a_step_compiled_by_inductor_equals_eager(preset: str, mode: bool | str) -> None:
    check_compiled_equals_eager([f"model={preset}"], mode, "inductor", 1e-5)


def test_generation_from_a_cache_stays_eager_after_compiling() -> None:
    torch._dynamo.reset()
    model = build(["model=gpt2_tiny", "model.n_layers=2"])
    ids, _ = batch(padded=False)
    compile_model(model, "layers", backend="aot_eager")
    counts = torch._dynamo.utils.counters
    counts.clear()
    with torch.no_grad():
        eager = model(ids[:, :5], cache=model.new_cache(2))
    assert not counts["stats"]["calls_captured"], "the cached path was compiled"
    with torch.no_grad():
        compiled = model(ids[:, :5])
    assert counts["stats"]["calls_captured"], "the forward without a cache was not compiled"
    torch.testing.assert_close(compiled[:, -1], eager[:, -1])


def test_compile_takes_true_false_or_layers(tmp_path: Path) -> None:
    cfg = tfgraph.compose([*tiny_text_run(tmp_path), "compile=sometimes", f"paths.output_dir={tmp_path / 'run'}"])
    with pytest.raises(tfgraph.ConfigError, match=r"compile: expected false, true .* or layers"):
        tfgraph.train(cfg)


@pytest.mark.slow
def test_a_run_trains_with_compiled_layers_and_saves_the_usual_checkpoint(tmp_path: Path) -> None:
    overrides = [*tiny_text_run(tmp_path), "trainer.max_steps=3", "compile=layers", f"paths.output_dir={tmp_path}/r"]
    metrics = tfgraph.train(tfgraph.compose(overrides))
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    state = tfgraph.tasks.load_checkpoint(metrics.run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    assert "model.decoder.layers.0.attn.qkv.weight" in state and not any("_orig_mod" in k for k in state)
