"""Property: any model config either builds and runs a finite forward, or is refused with a ConfigError.

Hypothesis draws a tiny preset, an option of each swappable group, model-level sizes and block arguments (good
values and bad ones: zero, negative, non-dividing, out of range) and sometimes a per-layer pattern. Whatever it
draws, building must not raise anything but :class:`tfgraph.ConfigError`, and a model that builds must compute
finite outputs on a small random batch (with padding sometimes) in eval mode. The default run is derandomized,
so CI sees the same examples every time; ``-m slow`` runs many more.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import tfgraph
from tests.conftest import SWAPPABLE_GROUPS, TINY_PRESETS, group_options, run
from tfgraph.registry import ConfigError

# (values in the domain, values out of it); the first value in the domain is the default of a drawn config.
MODEL_VALUES = {
    "d_model": ([8, 16, 32, 12, 6, 1], [0, -8]),
    "n_heads": ([2, 4, 1, 3, 8], [0, -2]),
    "n_kv_heads": ([None, 1, 2, 4, 3], [0]),
    "n_layers": ([1, 2], [0, -1]),
    "d_ff": ([16, 32, 8, 1], [0, -4]),
    "max_len": ([8, 16, 4, 1], [0, -1]),
    "dropout": ([0.0, 0.1, 0.5, 0.99], [1.0, 1.5, -0.1]),
    "vocab_size": ([64, 2], [0]),
    "n_decoder_layers": ([None, 1, 2], [0]),
    "tie_embeddings": ([True, False], []),
    "embed_norm": ([False, True], []),
    "token_types": ([0, 2], [-1]),
    "init_std": ([0.02, 1.0], [0.0, -0.1]),
}
PRESET_DEFAULTS = ("n_kv_heads", "n_decoder_layers", "tie_embeddings", "embed_norm", "token_types", "init_std")
# Arguments of particular parts, or of the part's block when it is named after a slash.
ARGUMENTS = {
    "norm": {"eps": ([1e-5, 1e-12, 1.0], [0.0, -1.0, float("inf")])},
    "norm/layernorm": {"bias": ([True, False], [])},
    "attention": {
        "softmax_scale": ([None, 1.0, 0.125], [0.0, -1.0]),
        "bias": ([True, False], []),
        "qk_norm": ([False, True], []),
        "dropout": ([0.0, 0.2], [1.0, -0.5]),
    },
    "attention/sliding_window": {"window": ([1, 2, 4, 256], [0, -3])},
    "cross_attention": {"softmax_scale": ([None, 1.0], [0.0]), "bias": ([True, False], [])},
    "head": {"bias": ([False, True], []), "rescale": ([False, True], [])},
    "position/rope": {"base": ([10000.0, 2.0, 1.0, 0.5], [0.0, -1.0]), "fraction": ([1.0, 0.5, 0.25], [0.0, 1.5])},
    "position/t5_bias": {"num_buckets": ([32, 8, 4, 3, 2], [1, 0]), "max_distance": ([128, 16, 5, 4, 2], [1, 0])},
    "ffn/moe": {"n_experts": ([2, 4, 1], [0]), "top_k": ([1, 2, 3], [0])},
    "ffn": {"bias": ([True, False], [])},
}
PATTERN_ENTRIES = (
    [
        {},
        {"attention": {"block": "sliding_window", "window": 2}},
        {"attention": {"block": "multihead", "inherit": False}},
        {"attention": {"softmax_scale": 0.5}},
        {"norm": {"eps": 1e-3}},
        {"norm": {"block": "scalenorm"}},
        {"norm": {"block": "rmsnorm"}},
        {"ffn": {"block": "mlp"}},
        {"ffn": {"block": "mlp", "activation": "relu"}},
        {"ffn": {"block": "moe", "n_experts": 2, "top_k": 1}},
    ],
    [
        {"attention": {"block": "sliding_window", "window": 0}},
        {"norm": {"eps": -1.0}},
        {"ffn": {"inherit": "no"}},
        {"position": {"block": "rope"}},
    ],
)

ADDED_NODES = [
    ("op", "dropout"),
    ("op", "scale"),
    ("norm", "rmsnorm"),
    ("ffn", "mlp"),
    ("attention", "multihead"),
    ("position", "learned"),
    ("embedding", "token"),
    ("head", "lm_head"),
    ("op", "nosuch"),
]


# Composed once each, as plain containers (build_model takes them as it takes a DictConfig, and they copy fast).
# tfgraph-show's config is the quickest to compose; its `model` node is the one training composes.


@functools.cache
def preset(name: str) -> dict[str, Any]:
    return OmegaConf.to_container(tfgraph.compose([f"model={name}"], config_name="show").model, resolve=True)


@functools.cache
def part(name: str, group: str, option: str) -> dict[str, Any]:
    """The part a preset gets from `model/<group>=<option>` (the preset's own settings for it merged in)."""
    cfg = tfgraph.compose([f"model={name}", f"model/{group}={option}"], config_name="show")
    return OmegaConf.to_container(cfg.model[group], resolve=True)


@st.composite
def model_configs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A composed model config with drawn parts, sizes and arguments; and the drawn values, for the report."""
    name = draw(st.sampled_from(TINY_PRESETS))
    cfg = copy.deepcopy(preset(name))
    drawn: dict[str, Any] = {"preset": name}
    for group in SWAPPABLE_GROUPS:
        if draw(st.booleans()):
            option = draw(st.sampled_from(group_options(group)))
            cfg[group] = copy.deepcopy(part(name, group, option))
            drawn[f"model/{group}"] = option
    wild = draw(st.integers(0, 2)) == 0  # a third of the configs may have values out of their domain
    for key, (good, bad) in MODEL_VALUES.items():
        # small sizes throughout: the presets' own are 64 wide with a 512-token vocabulary
        cfg[key] = cfg[key] if key in PRESET_DEFAULTS else good[0]
        if draw(st.integers(0, 3)) == 0:
            cfg[key] = draw(st.sampled_from(good + bad if wild else good))
        drawn[key] = cfg[key]
    for where, arguments in ARGUMENTS.items():
        group, _, block = where.partition("/")
        if block and cfg[group].get("block") != block:
            continue
        for key, (good, bad) in arguments.items():
            if draw(st.integers(0, 2)) == 0:
                cfg[group][key] = draw(st.sampled_from(good + bad if wild else good))
                drawn[f"model.{group}.{key}"] = cfg[group][key]
    if draw(st.integers(0, 3)) == 0:
        good, bad = PATTERN_ENTRIES
        entries = draw(st.lists(st.sampled_from(good + bad if wild else good), min_size=1, max_size=3))
        cfg["pattern"] = copy.deepcopy(entries)
        drawn["model.pattern"] = entries
    if wild and draw(st.booleans()):
        drawn.update(draw(layer_edits(cfg)))
    return cfg, drawn


@st.composite
def layer_edits(draw: st.DrawFn, cfg: dict[str, Any]) -> dict[str, Any]:
    """Rewire the layer graph (in place): a node's inputs, the output, a node dropped or added, the final norm."""
    graph = "cross_nodes" if "cross_nodes" in cfg["layer"] and draw(st.booleans()) else "nodes"
    nodes = cfg["layer"][graph]
    name = draw(st.sampled_from(sorted(nodes)))
    edit = draw(st.sampled_from(["in", "output", "drop", "add", "final_norm"]))
    if edit == "in":
        other = draw(st.sampled_from(sorted(nodes)))
        value = draw(st.sampled_from([other, "x", "memory", "nosuch", [], [other, "x"], 5, True, [[other]]]))
        nodes[name]["in"] = value
    elif edit == "output":
        value = draw(st.sampled_from([name, "x", "nosuch", 5, [name]]))
        cfg["layer"]["output"] = value
    elif edit == "drop":
        value = None
        del nodes[name]
    elif edit == "add":
        kind, block = draw(st.sampled_from(ADDED_NODES))
        value = {"block": block, "kind": kind, "in": name}
        nodes["extra"] = value
        cfg["layer"]["output"] = "extra"
    else:
        value = not cfg["layer"]["final_norm"]
        cfg["layer"]["final_norm"] = value
    return {f"model.layer.{graph}.{name}:{edit}": value}


def padding(length: int, batch: int, data: st.DataObject, label: str) -> torch.Tensor | None:
    """Sometimes a [B, T] mask of right or left padding (a row may be all padding)."""
    if not data.draw(st.booleans(), label=f"{label} padded"):
        return None
    lengths = data.draw(st.lists(st.integers(0, length), min_size=batch, max_size=batch), label=f"{label} lengths")
    mask = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
    return mask.flip(1) if data.draw(st.booleans(), label=f"{label} left padded") else mask


def check(drawn: tuple[dict[str, Any], dict[str, Any]], data: st.DataObject) -> None:
    """The property: a ConfigError, or a model whose eval-mode forward on a random batch is finite."""
    cfg, summary = drawn
    note(summary)
    torch.manual_seed(0)
    try:
        model = tfgraph.build_model(cfg)
    except ConfigError:
        return
    model.eval()
    sizes = model.spec.sizes
    longest = min(8, sizes["max_len"])
    batch = data.draw(st.integers(1, 2), label="batch")
    length = data.draw(st.integers(1, longest), label="length")
    ids = torch.randint(0, sizes["vocab_size"], (batch, length))
    dec = dec_mask = None
    if model.topology == "encoder_decoder":  # a decoder length of its own, so that memory and queries differ
        dec_length = data.draw(st.integers(1, longest), label="decoder length")
        dec = torch.randint(0, sizes["vocab_size"], (batch, dec_length))
        dec_mask = padding(dec_length, batch, data, "decoder")
    with torch.no_grad():
        out = run(model, ids, padding(length, batch, data, "input"), dec, dec_mask)
    width = sizes["d_model"] if model.topology == "encoder_only" else sizes["vocab_size"]
    assert out.shape == (batch, length if dec is None else dec.shape[1], width)
    assert torch.isfinite(out).all(), "non-finite output"


@settings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(drawn=model_configs(), data=st.data())
def test_every_config_builds_a_finite_model_or_is_a_config_error(drawn, data):
    check(drawn, data)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(drawn=model_configs(), data=st.data())
def test_every_config_builds_a_finite_model_or_is_a_config_error_at_length(drawn, data):
    check(drawn, data)
