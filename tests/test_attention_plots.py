"""Attention heatmaps: a colour bar of the weights, and every token label in the picture (none cut off)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from tfgraph.attention_maps import plot_heads, token_label

BPE_TOKENS = ["The", " quick", " brownest", "\n", " extraordinarily", " ", "Ġfox", " jumps"]


def ink(path: Path) -> np.ndarray:
    """Where the picture is not white: [rows, cols] of booleans."""
    pixels = matplotlib.image.imread(path)[..., :3]
    return (pixels < 0.95).any(axis=-1)


@pytest.mark.parametrize("heads", [1, 4, 6])
def test_a_heatmap_has_a_colour_bar_and_no_label_touches_its_edges(tmp_path: Path, heads: int) -> None:
    torch.manual_seed(0)
    weights = torch.softmax(torch.randn(heads, len(BPE_TOKENS), len(BPE_TOKENS)), dim=-1)
    path = plot_heads(weights, BPE_TOKENS, BPE_TOKENS, tmp_path / "layer.png", title="decoder.layers.0.attn")
    drawn = ink(path)
    assert drawn.any()
    # a label cut off by the canvas would reach its border; the picture has a white margin all round instead
    assert not (drawn[0].any() or drawn[-1].any() or drawn[:, 0].any() or drawn[:, -1].any())
    # the colour bar: a column of the colour map right of the panels (viridis runs from dark purple to yellow)
    pixels = matplotlib.image.imread(path)[..., :3]
    yellow = (pixels[..., 0] > 0.9) & (pixels[..., 1] > 0.85) & (pixels[..., 2] < 0.3)
    purple = (pixels[..., 0] > 0.2) & (pixels[..., 0] < 0.35) & (pixels[..., 1] < 0.05) & (pixels[..., 2] > 0.3)
    assert yellow.any() and purple.any()  # the bar spans 0 to 1 whatever the weights are
    assert np.nonzero(yellow)[1].min() > drawn.shape[1] // 2  # yellow only in the bar, right of the heads


def test_token_labels_show_what_is_hard_to_see() -> None:
    assert [token_label(t) for t in ["\n", "a\tb", " ", "  ", " the"]] == ["\\n", "a\\tb", "␣", "␣␣", " the"]
