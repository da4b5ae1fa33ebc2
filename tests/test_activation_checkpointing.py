"""``model.activation_checkpointing=true``: each layer graph keeps only its input and runs again in the backward
pass. The loss and every gradient equal those without it (dropout included: the recomputation replays the random
state); it applies only while training with gradients on, never with a KV cache."""

from __future__ import annotations

import pytest
import torch

import tfgraph
from tests.conftest import run

CASES = {
    "gpt2_tiny": ["model=gpt2_tiny", "model.dropout=0.1"],
    "llama_tiny-padded": ["model=llama_tiny"],
    "bert_tiny-padded": ["model=bert_tiny", "model.dropout=0.1"],
    "t5_tiny-padded": ["model=t5_tiny", "model.dropout=0.1"],
}


def count_layer_runs(model: torch.nn.Module) -> list[int]:
    """A list that grows by one each time a layer graph of ``model`` runs (its recomputation in backward too)."""
    calls: list[int] = []
    for layer in model.modules():
        if isinstance(layer, tfgraph.graph.LayerGraph):
            layer.forward = lambda *a, forward=layer.forward, **k: calls.append(1) or forward(*a, **k)
    return calls


def build(overrides: list[str], checkpointing: bool) -> tfgraph.models.Transformer:
    torch.manual_seed(0)
    flag = f"model.activation_checkpointing={str(checkpointing).lower()}"
    return tfgraph.build_model(tfgraph.compose([*overrides, "model.n_layers=2", flag]).model).train()


def loss_and_grads(model: torch.nn.Module, padded: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ids = torch.randint(0, 512, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 6:] = 0
    torch.manual_seed(2)  # the dropout masks
    out = run(model, ids, mask if padded else None, dec=ids, dec_mask=mask if padded else None)
    loss = out.float().pow(2).mean()
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_equal_those_without_checkpointing(case: str) -> None:
    plain = build(CASES[case], checkpointing=False)
    checkpointed = build(CASES[case], checkpointing=True)
    stacks = [m for m in checkpointed.modules() if isinstance(m, tfgraph.models.transformer.Stack)]
    assert stacks and all(stack.activation_checkpointing for stack in stacks)

    calls = count_layer_runs(checkpointed)
    padded = case.endswith("padded")
    loss, grads = loss_and_grads(plain, padded)
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointed, padded)
    n_layers = sum(len(stack.layers) for stack in stacks)
    assert len(calls) == 2 * n_layers  # each layer ran again in the backward pass: it was checkpointed
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads.keys() == grads_ckpt.keys() and len(grads) == len(list(plain.parameters()))
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_checkpointing_is_off_in_eval_without_gradients_and_with_a_cache() -> None:
    model = build(["model=gpt2_tiny"], checkpointing=True)
    calls = count_layer_runs(model)
    ids = torch.randint(0, 512, (2, 6))
    with torch.no_grad():
        model(ids)
    model.eval()
    model(ids).sum().backward()
    cache = model.new_cache(2)
    model.train()
    model(ids, cache=cache).sum().backward()
    assert len(calls) == 3 * len(model.decoder.layers)  # three forwards, no layer run twice


def test_a_checkpointing_flag_that_is_not_a_bool_is_a_config_error() -> None:
    with pytest.raises(tfgraph.ConfigError, match=r"model.activation_checkpointing: expected true or false"):
        tfgraph.build_model(tfgraph.compose(["model=gpt2_tiny", "model.activation_checkpointing=sometimes"]).model)
