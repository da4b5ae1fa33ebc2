"""The model's own contract (sizes and spec given at construction) and the layering of the package."""

from __future__ import annotations

import pytest
import torch

import tfgraph
from tfgraph.blocks.embedding import TokenEmbedding
from tfgraph.blocks.heads import LMHead
from tfgraph.blocks.norm import LayerNorm
from tfgraph.blocks.position import LearnedPosition
from tfgraph.graph import LayerGraph
from tfgraph.models import DecoderOnly, Stack
from tfgraph.spec import model_spec

TINY = {
    "topology": "decoder_only",
    "d_model": 16,
    "n_heads": 2,
    "n_layers": 2,
    "d_ff": 32,
    "vocab_size": 40,
    "max_len": 24,
    "attention": {"block": "multihead"},
    "ffn": {"block": "mlp"},
    "norm": {"block": "layernorm"},
    "position": {"block": "learned"},
    "embedding": {"block": "token"},
    "head": {"block": "lm_head"},
    "layer": {
        "nodes": {
            "norm1": {"slot": "norm", "in": "x"},
            "attn": {"slot": "attention", "in": "norm1"},
            "res1": {"block": "add", "in": ["x", "attn"]},
            "norm2": {"slot": "norm", "in": "res1"},
            "ffn": {"slot": "ffn", "in": "norm2"},
            "out": {"block": "add", "in": ["res1", "ffn"]},
        },
        "output": "out",
    },
}


def test_built_model_carries_its_sizes() -> None:
    model = tfgraph.build_model(TINY)
    assert (model.max_len, model.vocab_size, model.d_model) == (24, 40, 16)
    assert model.sizes["n_heads"] == 2 and model.init_std == 0.02 and model.tie_embeddings is True
    assert model.head.weight is model.embedding.weight
    assert model.spec.sizes == dict(model.sizes) and model.config["d_model"] == 16
    with pytest.raises(TypeError):
        model.sizes["max_len"] = 1  # read-only
    ids = torch.randint(40, (2, 5))
    h = model.hidden_states(ids)
    assert h.shape == (2, 5, 16)
    torch.testing.assert_close(model.logits(h), model(ids))


def test_hand_built_decoder_generates_from_a_cache() -> None:
    spec = model_spec(TINY)
    graph = spec.decoder.layers[0]
    sizes = {"d_model": 16, "vocab_size": 40, "max_len": 24}
    model = DecoderOnly(
        embedding=TokenEmbedding(vocab_size=40, d_model=16),
        head=LMHead(d_model=16, vocab_size=40),
        decoder=Stack(
            position=LearnedPosition(max_len=24, d_model=16),
            layers=[LayerGraph(graph), LayerGraph(graph)],
            causal=True,
            final_norm=LayerNorm(d_model=16),
        ),
        sizes=sizes,
    )
    assert model.spec is None and model.config is None and model.tie_embeddings is False
    cache = model.new_cache(2)
    assert cache.max_len == 24
    ids = torch.randint(40, (2, 6))
    full = model(ids)
    step = torch.cat([model(ids[:, :4], cache=cache), model(ids[:, 4:], cache=cache)], dim=1)
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


def test_a_model_without_its_sizes_is_refused() -> None:
    with pytest.raises(ValueError, match="max_len"):
        DecoderOnly(embedding=TokenEmbedding(vocab_size=40, d_model=16), decoder=None, sizes={"d_model": 16})


def test_the_block_protocol_is_read_once_at_registration() -> None:
    from torch import nn

    from tfgraph.blocks.attention import CrossAttention, MultiHeadAttention
    from tfgraph.blocks.ffn import MixtureOfExperts
    from tfgraph.registry import block_protocol

    attention = block_protocol(MultiHeadAttention)
    assert (attention.kind, attention.name, attention.needs, attention.plumbed) == (
        "attention",
        "multihead",
        ("context", "cache"),
        2,
    )
    assert block_protocol(CrossAttention).cache and not block_protocol(CrossAttention).aux_loss
    assert block_protocol(MixtureOfExperts).aux_loss and block_protocol(MixtureOfExperts).needs == ()
    assert block_protocol(nn.Linear).kind is None  # never registered: read from the class, nothing needed

    @tfgraph.register("op", "needs_context_test_only")
    class Peek(nn.Module):
        needs = ("context",)

        def forward(self, x, ctx):
            return x

    assert block_protocol(Peek).needs == ("context",)
    Peek.needs = ()  # read at registration: a later change of the class attribute does not count
    assert block_protocol(Peek).context
    with pytest.raises(TypeError, match="a block with a cache needs the context"):

        @tfgraph.register("op", "cache_only_test_only")
        class CacheOnly(nn.Module):
            needs = ("cache",)

    with pytest.raises(TypeError, match="expected a tuple of 'context', 'cache'"):

        @tfgraph.register("op", "typo_test_only")
        class Typo(nn.Module):
            needs = ("contex",)


BLOCKED_IMPORT = """
import importlib.abc
import sys

BLOCKED = ("hydra", "omegaconf", "pytorch_lightning", "lightning")


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None


sys.meta_path.insert(0, Block())
import tfgraph.blocks, tfgraph.graph, tfgraph.models  # noqa: E401

import torch

model = tfgraph.models.build_model(CONFIG)
logits = model(torch.randint(CONFIG["vocab_size"], (2, 5)))
assert logits.shape == (2, 5, CONFIG["vocab_size"]), logits.shape
assert tfgraph.build_model is tfgraph.models.build_model and issubclass(tfgraph.ConfigError, ValueError)
try:
    tfgraph.models.build_model({**CONFIG, "d_model": -1})
except tfgraph.ConfigError as err:
    assert "model.d_model" in str(err), err
else:
    raise AssertionError("a bad config built")
try:
    tfgraph.compose
except ImportError:
    pass  # composing needs Hydra, and says so
else:
    raise AssertionError("compose without Hydra")
loaded = [name for name in sys.modules if name.split(".")[0] in BLOCKED]
assert not loaded, loaded
print("ok")
"""


def test_blocks_graph_and_models_import_and_build_without_hydra_omegaconf_or_lightning() -> None:
    import subprocess
    import sys

    script = f"CONFIG = {TINY!r}\n" + BLOCKED_IMPORT
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_registry_imports_no_block() -> None:
    import ast
    from pathlib import Path

    source = Path(tfgraph.registry.__file__).read_text(encoding="utf-8")
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert not [name for name in imported if name and name.startswith("tfgraph")]
    assert 'import_module("tfgraph' not in source  # nor at run time


def test_a_variant_takes_its_parents_arguments_without_repeating_them() -> None:
    import inspect

    from tfgraph.blocks.attention import MultiHeadAttention, SlidingWindowAttention
    from tfgraph.registry import Problems, bind

    parent = list(inspect.signature(MultiHeadAttention.__init__).parameters)
    assert list(inspect.signature(SlidingWindowAttention.__init__).parameters) == [*parent, "window"]
    problems = Problems()
    kwargs = bind(
        SlidingWindowAttention,
        {"window": 0, "bias": 1},
        context={"d_model": 16, "n_heads": 2},
        path="model.attention",
        problems=problems,
    )
    assert dict(problems.items) == {
        "model.attention.window": "expected an integer >= 1, got 0",
        "model.attention.bias": "attention block 'sliding_window' (SlidingWindowAttention) expects true or false, got 1",
    }
    assert "softmax_scale" in kwargs and "n_kv_heads" in kwargs
    block = SlidingWindowAttention(d_model=16, n_heads=2, window=3, qk_norm=True)
    assert block.window == 3 and block.q_norm is not None


def test_recording_replaces_attend_only_while_it_records() -> None:
    from tfgraph.attention_maps import recording

    model = tfgraph.build_model(TINY)
    attention = model.decoder.layers[0].attn
    with recording(model) as weights:
        assert "attend" in vars(attention)
        model(torch.randint(40, (1, 4)))
    assert "attend" not in vars(attention)
    assert list(weights) == ["decoder.layers.0.attn", "decoder.layers.1.attn"]


def test_kinds_are_inherited_for_initialisation_and_other_classes_are_no_blocks() -> None:
    from torch import nn

    from tfgraph.blocks.norm import LayerNorm
    from tfgraph.registry import registered_kind, reports_aux_loss

    class Odd(nn.Module):
        needs = "not a protocol"  # an attribute of another meaning on a module that is no block

    class MyNorm(LayerNorm):
        pass

    assert registered_kind(MyNorm) == "norm" and registered_kind(Odd) is None and registered_kind(nn.Linear) is None
    assert not reports_aux_loss(Odd)
    model = DecoderOnly(
        embedding=TokenEmbedding(vocab_size=40, d_model=16),
        decoder=Stack(position=LearnedPosition(max_len=24, d_model=16), layers=[], causal=True, final_norm=Odd()),
        sizes={"d_model": 16, "vocab_size": 40, "max_len": 24},
    )
    assert model.aux_loss() is None and not model.has_aux_loss


def test_a_model_pickles_and_deep_copies() -> None:
    import copy
    import pickle

    model = tfgraph.build_model(TINY)
    ids = torch.randint(40, (1, 5))
    for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert dict(twin.sizes) == dict(model.sizes) and twin.max_len == 24
        torch.testing.assert_close(twin(ids), model(ids))
        assert twin.head.weight is twin.embedding.weight
