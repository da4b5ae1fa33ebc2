"""Every preset with every option of every swappable group: builds, runs, is causal where it must be, and
ignores padding. Full-size parameter counts are checked on the meta device."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import tfgraph
from tests.conftest import FULL_PRESETS, SWAPPABLE_GROUPS, TINY_PRESETS, build, group_options, run
from tfgraph.checks import Subject, run_checks
from tfgraph.config import conf_dir

pytestmark = pytest.mark.usefixtures("one_thread")  # one thread for tiny models (tests/conftest.py)

MATRIX = [
    (preset, group, option) for preset in TINY_PRESETS for group in SWAPPABLE_GROUPS for option in group_options(group)
]


def test_every_group_has_the_contract_options():
    assert {"multihead", "sliding_window"} <= set(group_options("attention"))
    assert {"learned", "sinusoidal", "rope", "alibi", "t5_bias", "none"} <= set(group_options("position"))
    assert {"layernorm", "rmsnorm", "scalenorm"} <= set(group_options("norm"))
    assert {"mlp", "swiglu", "geglu", "moe"} <= set(group_options("ffn"))
    assert {"prenorm", "postnorm", "parallel", "sandwich"} <= set(group_options("layer"))


# the checks of tfgraph-check that need neither a cache nor a compiler, and those a topology skips
MATRIX_CHECKS = ("forward", "causality", "padding_right", "padding_left")
SKIPPED = {"encoder_only": {"causality", "padding_left"}, "encoder_decoder": {"padding_left"}, "decoder_only": set()}


@pytest.mark.parametrize(("preset", "group", "option"), MATRIX, ids=[f"{p}-{g}={o}" for p, g, o in MATRIX])
def test_preset_with_option_runs_is_causal_and_ignores_padding(preset, group, option):
    """tfgraph-check's forward (shape, finite), causality (a change at t = 3, 8 of 12 moves nothing before t and
    something from t), right padding (a 7-token row among 12) and left padding (decoder_only) checks."""
    model = build([f"model={preset}", f"model/{group}={option}", "model.max_len=64"])
    chosen = OmegaConf.to_container(OmegaConf.load(conf_dir() / "model" / group / f"{option}.yaml"))
    key = "nodes" if group == "layer" else "block"
    assert model.config[group][key] == chosen[key]
    results = run_checks(Subject(model=model, seq_len=12, atol=1e-5), MATRIX_CHECKS)
    assert [r for r in results if r.status == "fail"] == []
    assert {r.name for r in results if r.status == "skip"} == SKIPPED[model.topology]


@pytest.mark.parametrize("preset", ["bert_tiny", "t5_tiny"])
def test_padding_is_masked_not_merely_harmless(preset):
    """Without the mask, the garbage after a short row changes its outputs (so the padding test above bites)."""
    model = build([f"model={preset}"])
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(0))
    unmasked = run(model, ids, dec=ids[:, :7])
    alone = run(model, ids[:, :7], dec=ids[:, :7])
    assert not torch.allclose(unmasked[:, :7], alone, atol=1e-4)


EXPECTED_PARAMS = {
    "gpt2": 124_439_808,  # GPT-2 small
    "llama": 1_235_814_400,  # Llama 3.2 1B
    "bert": 108_891_648,  # BERT-base without the pooler
    "t5": 60_506_624,  # T5-small
    "transformer": 63_082_496,  # Vaswani et al. base, shared 37k vocabulary (the paper rounds to 65M)
}


@pytest.mark.parametrize("preset", FULL_PRESETS)
def test_full_size_parameter_counts(preset):
    with torch.device("meta"):
        model = tfgraph.build_model(tfgraph.compose([f"model={preset}"]).model)
    assert model.num_parameters() == EXPECTED_PARAMS[preset]
    assert next(model.parameters()).is_meta


def test_bert_with_pooler_counts_as_the_reference():
    from tfgraph.blocks.heads import Pooler

    with torch.device("meta"):
        model = tfgraph.build_model(tfgraph.compose(["model=bert"]).model)
        pooler = Pooler(d_model=768)
    assert model.num_parameters() + sum(p.numel() for p in pooler.parameters()) == 109_482_240


def test_layers_are_fresh_objects_and_tied_head_shares_the_embedding():
    model = build(["model=gpt2_tiny", "model.n_layers=3"])
    layers = list(model.decoder.layers)
    assert layers[0].attn is not layers[1].attn
    assert layers[0].attn.qkv.weight.data_ptr() != layers[1].attn.qkv.weight.data_ptr()
    assert model.head.weight is model.embedding.weight
    untied = build(["model=gpt2_tiny", "model.tie_embeddings=false"])
    assert untied.head.weight is not untied.embedding.weight
    assert untied.num_parameters() == build(["model=gpt2_tiny"]).num_parameters() + 512 * 64


def test_encoder_decoder_layer_counts_and_shared_embedding():
    model = build(["model=t5_tiny", "model.n_layers=3", "model.n_decoder_layers=1"])
    assert len(model.encoder.layers) == 3 and len(model.decoder.layers) == 1
    assert hasattr(model.decoder.layers[0], "cross") and not hasattr(model.encoder.layers[0], "cross")
    assert model.encoder.position is not model.decoder.position  # T5 keeps one bias table per stack


def test_per_layer_pattern_alternates_sliding_window_and_global_attention():
    from tfgraph.blocks.attention import MultiHeadAttention, SlidingWindowAttention

    overrides = [
        "model=llama_tiny",
        "model.n_layers=4",
        "model.pattern=[{attention: {block: sliding_window, window: 2}}, {}]",
    ]
    model = build(overrides)
    kinds = [type(layer.attn) for layer in model.decoder.layers]
    assert kinds == [SlidingWindowAttention, MultiHeadAttention, SlidingWindowAttention, MultiHeadAttention]
    assert model.decoder.windows == (2, None)

    # with window 1 everywhere, a token sees only itself: changing an earlier token changes nothing later
    local = build(["model=llama_tiny", "model.pattern=[{attention: {window: 1, block: sliding_window}}]"])
    ids = torch.randint(0, 512, (1, 10), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 2] = (changed[0, 2] + 1) % 512
    torch.testing.assert_close(local(changed)[:, 3:], local(ids)[:, 3:])


def test_pattern_overrides_an_argument_of_the_selected_part():
    model = build(["model=gpt2_tiny", "model/ffn=moe", "model.pattern=[{ffn: {top_k: 1}}, {ffn: {top_k: 2}}]"])
    assert [layer.ffn.top_k for layer in model.decoder.layers] == [1, 2]


def test_moe_load_balancing_loss_reaches_the_model():
    model = build(["model=gpt2_tiny", "model/ffn=moe"])
    assert model.aux_loss() is not None  # set on construction
    model(torch.randint(0, 512, (2, 8)))
    loss = model.aux_loss()
    assert loss.ndim == 0 and loss.item() > 0
    assert build(["model=gpt2_tiny"]).aux_loss() is None


def test_topologies_refuse_the_wrong_inputs():
    with pytest.raises(ValueError, match="decoder_input_ids"):
        build(["model=t5_tiny"])(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="decoder_only"):
        build(["model=gpt2_tiny"])(
            torch.zeros(1, 4, dtype=torch.long), decoder_input_ids=torch.zeros(1, 4, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="encoder_only model reads input_ids"):
        build(["model=bert_tiny"])(
            torch.zeros(1, 4, dtype=torch.long), decoder_attention_mask=torch.ones(1, 4, dtype=torch.long)
        )


def test_bert_token_types_change_the_output():
    model = build(["model=bert_tiny"])
    ids = torch.randint(0, 512, (1, 6))
    a = model(ids)
    b = model(ids, token_type_ids=torch.ones_like(ids))
    assert not torch.allclose(a, b)
