"""Embedding, head and op blocks against computations written out by hand."""

import math

import pytest
import torch
from torch import nn

from tfgraph.blocks.embedding import TokenEmbedding
from tfgraph.blocks.heads import LMHead, Pooler
from tfgraph.blocks.ops import Add, Dropout, Scale
from tfgraph.registry import _REGISTRY, Problems, bind


def test_registered_names():
    assert _REGISTRY["embedding"]["token"] is TokenEmbedding
    assert _REGISTRY["head"]["lm_head"] is LMHead
    assert _REGISTRY["head"]["pooler"] is Pooler
    assert _REGISTRY["op"]["add"] is Add
    assert _REGISTRY["op"]["scale"] is Scale
    assert _REGISTRY["op"]["dropout"] is Dropout


def test_token_embedding_looks_up_rows():
    torch.manual_seed(0)
    emb = TokenEmbedding(vocab_size=10, d_model=6)
    assert [name for name, _ in emb.named_parameters()] == ["weight"] and emb.weight.shape == (10, 6)
    ids = torch.tensor([[1, 2, 3], [9, 0, 1]])
    out = emb(ids)
    assert out.shape == (2, 3, 6)
    for b in range(2):
        for t in range(3):
            assert torch.equal(out[b, t], emb.weight[ids[b, t]])


def test_token_embedding_scale():
    torch.manual_seed(0)
    emb = TokenEmbedding(vocab_size=10, d_model=16, scale=True)
    ids = torch.tensor([[4, 5]])
    torch.testing.assert_close(emb(ids)[0, 1], emb.weight[5] * 4.0)


def test_lm_head_logits_and_bias():
    torch.manual_seed(0)
    head = LMHead(d_model=6, vocab_size=11, bias=True).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    logits = head(x)
    assert logits.shape == (2, 3, 11)
    torch.testing.assert_close(logits, x @ head.weight.T + head.bias)
    assert LMHead(d_model=6, vocab_size=11).bias is None


def test_lm_head_ties_to_embedding():
    torch.manual_seed(0)
    model = nn.Module()
    model.embedding = TokenEmbedding(vocab_size=11, d_model=6)
    model.head = LMHead(d_model=6, vocab_size=11)
    model.head.weight = model.embedding.weight
    assert model.head.weight is model.embedding.weight
    assert sum(p.numel() for p in model.parameters()) == 11 * 6  # counted once
    x = torch.randn(2, 3, 6)
    torch.testing.assert_close(model.head(x), x @ model.embedding.weight.T)
    model.head(x).sum().backward()
    assert model.embedding.weight.grad is not None


def test_lm_head_rescale():
    torch.manual_seed(0)
    head = LMHead(d_model=16, vocab_size=5, rescale=True).double()
    x = torch.randn(1, 2, 16, dtype=torch.float64)
    torch.testing.assert_close(head(x), (x / 4.0) @ head.weight.T)


def test_pooler():
    torch.manual_seed(0)
    pooler = Pooler(d_model=6).double()
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    out = pooler(x)
    assert out.shape == (3, 6)
    torch.testing.assert_close(out, torch.tanh(x[:, 0] @ pooler.dense.weight.T + pooler.dense.bias))


def test_add():
    a, b, c = torch.randn(3, 2, 4).unbind(0)
    add = Add()
    assert torch.equal(add(a), a)
    torch.testing.assert_close(add(a, b), torch.stack([a, b]).sum(0))
    torch.testing.assert_close(add(a, b, c), torch.stack([a, b, c]).sum(0))
    assert sum(p.numel() for p in add.parameters()) == 0


def test_scale():
    x = torch.randn(2, 3)
    torch.testing.assert_close(Scale(value=0.5)(x), x / 2)
    assert torch.equal(Scale()(x), x)


def test_dropout():
    torch.manual_seed(0)
    x = torch.ones(100_000)
    drop = Dropout(dropout=0.5)
    drop.eval()
    assert torch.equal(drop(x), x)
    drop.train()
    y = drop(x)
    zeros = (y == 0).float().mean().item()
    assert zeros == pytest.approx(0.5, abs=0.01)
    assert torch.all((y == 0) | (y == 2.0))  # survivors scaled by 1 / (1 - p)
    assert Dropout().p == 0.0


def test_model_sizes_bind_by_name():
    problems = Problems()
    context = {"d_model": 8, "vocab_size": 32, "dropout": 0.1, "n_heads": 2}
    assert bind(Dropout, {}, context=context, path="x", problems=problems) == {"dropout": 0.1}
    assert bind(LMHead, {"rescale": True}, context=context, path="x", problems=problems) == {
        "rescale": True,
        "d_model": 8,
        "vocab_size": 32,
        "bias": False,  # defaults are bound explicitly
    }
    assert bind(Scale, {"value": 2}, context=context, path="x", problems=problems) == {"value": 2}
    assert not problems
    assert math.isclose(Scale(value=2).value, 2.0)
