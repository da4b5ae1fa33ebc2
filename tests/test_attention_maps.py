"""Recorded attention weights are what SDPA computes (the model's outputs do not change while recording), obey the
masks, come back for any layer and head, and become heatmaps and a top-attended report."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import build, run
from tfgraph.attention_maps import attention_map, attention_report, attention_weights, recording, top_attended

pytestmark = pytest.mark.usefixtures("one_thread")  # one thread for tiny models (tests/conftest.py)

CASES = [
    ["model=gpt2_tiny"],
    ["model=llama_tiny"],  # grouped key/value heads and rotary
    ["model=llama_tiny", "model/position=alibi", "model/attention=sliding_window", "model.attention.window=3"],
    ["model=bert_tiny"],
    ["model=t5_tiny"],  # relative bias, cross-attention
]


@pytest.mark.parametrize("overrides", CASES, ids=[" ".join(c[1:]) or c[0] for c in CASES])
def test_recorded_weights_are_what_sdpa_computes(overrides):
    model = build([*overrides, "model.init_std=0.1"])
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    plain = run(model, ids, mask, dec=ids, dec_mask=mask)
    with torch.no_grad(), recording(model) as weights:
        recorded = run(model, ids, mask, dec=ids, dec_mask=mask)
    # the recorded path computes weights @ v itself: equal outputs mean equal weights
    torch.testing.assert_close(recorded, plain, rtol=0, atol=1e-5)
    assert all(m.record is None for m in model.modules() if hasattr(m, "record"))  # the slot is emptied again
    n_layers = sum(len(getattr(model, s).layers) for s in ("encoder", "decoder") if hasattr(model, s))
    assert len(weights) == n_layers + (len(model.decoder.layers) if model.topology == "encoder_decoder" else 0)
    for name, w in weights.items():
        assert w.shape[:3] == (2, model.config["n_heads"], 9)
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:3]))
        assert (w[1, :, :6, 6:] == 0).all(), name  # padded keys get nothing
        causal = name.startswith("decoder") and name.endswith("attn")
        if causal:
            assert (w.triu(1) == 0).all(), name
        if "window" in " ".join(overrides) and causal:
            assert (w.tril(-3) == 0).all(), name


def test_the_normal_path_records_nothing_and_keeps_sdpa(monkeypatch):
    model = build(["model=gpt2_tiny"])
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    ids = torch.randint(0, 512, (1, 5))
    model(ids)
    assert len(calls) == 2
    with recording(model):
        model(ids)
    assert len(calls) == 2  # recording computes the weights explicitly


def test_any_layer_and_head():
    model = build(["model=t5_tiny", "model.init_std=0.1"])
    ids = torch.randint(0, 512, (1, 7))
    dec = torch.randint(0, 512, (1, 4))
    all_heads = attention_map(model, ids, layer=1)  # the encoder, as no decoder input is given
    assert all_heads.shape == (1, 4, 7, 7)
    torch.testing.assert_close(attention_map(model, ids, layer=1, head=2), all_heads[:, 2])
    cross = attention_map(model, ids, layer=0, head=3, node="cross", decoder_input_ids=dec)
    assert cross.shape == (1, 4, 7)
    weights = attention_weights(model, ids, decoder_input_ids=dec)
    torch.testing.assert_close(cross, weights["decoder.layers.0.cross"][:, 3])
    with pytest.raises(KeyError, match="recorded"):
        attention_map(model, ids, layer=5)


def test_top_attended_lists_the_heaviest_keys():
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [0.5, 0.1, 0.4]])
    got = top_attended(weights, ["time", "flies", "like"], ["time", "flies", "like"], k=2)
    assert [(q, [k for k, _ in keys]) for q, keys in got] == [
        ("time", ["time", "flies"]),
        ("flies", ["flies", "time"]),
        ("like", ["time", "like"]),
    ]
    assert got[2][1][0][1] == pytest.approx(0.5)


def test_attention_report_writes_a_png_per_layer(tmp_path):
    model = build(["model=gpt2_tiny", "model.n_layers=3"])
    tokens = ["time", "flies", "like", "an", "arrow"]
    report = attention_report(model, tokens, torch.randint(0, 512, (5,)), tmp_path / "maps")
    pngs = sorted((tmp_path / "maps").glob("*.png"))
    assert [p.name for p in pngs] == [f"decoder.layers.{i}.attn.png" for i in range(3)]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    for token in tokens:
        assert f"'{token}' -> " in report
    assert report.count("'time' -> 'time' 1.00") == 3  # the first token can only attend to itself
    with pytest.raises(ValueError, match="5 tokens for 4"):
        attention_report(model, tokens, torch.randint(0, 512, (4,)), tmp_path)
