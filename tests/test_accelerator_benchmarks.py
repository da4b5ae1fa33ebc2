"""The accelerator path's benchmarks at a tiny size on the CPU, so that they cannot rot unnoticed:
experiments/benchmarks/gpu.py (ready for a GPU, not measured on one here) and its MFU bookkeeping, and
experiments/benchmarks/activation_checkpointing.py."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"


@pytest.fixture(scope="module")
def gpu():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("gpu")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_the_tiny_cpu_run_trains_both_models_and_generates_beside_hugging_face(gpu, tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    argv = ["--tiny", "--device", "cpu", "--no-compile", "--warmup", "1", "--steps", "1", "--rounds", "1"]
    result = gpu.main([*argv, "--gen-rounds", "1", "--out", str(out)])
    train, gen = result["training"], result["generation"]
    assert out.is_file() and train["device"] == "cpu" and train["peak_bf16_flops"] is None
    assert set(train["tokens_per_s"]) == {"tfgraph", "nanogpt"} and all(v > 0 for v in train["tokens_per_s"].values())
    assert train["first_losses"]["tfgraph"] == pytest.approx(train["first_losses"]["nanogpt"], abs=2e-2)  # bf16
    assert train["check"]["max_abs_logit_diff"] <= 1e-4 and gen["max_abs_logit_diff_fp32"] <= 1e-4
    assert set(gen["tokens_per_s"]) == {"hf", "tfgraph"} and gen["same_tokens_as_hf"] == {"hf": True, "tfgraph": True}


def test_mfu_counts_6n_plus_attention_against_the_device_peak(gpu) -> None:
    sizes = dict(gpu.FULL)
    assert gpu.flops_per_token(sizes, 1024, 124_000_000) == 6 * 124_000_000 + 12 * 12 * 1024 * 768
    assert gpu.device_peak(torch.device("cpu")) == ("cpu", None)
    assert gpu.PEAK_BF16["H100"] == 989e12 and next(k for k in gpu.PEAK_BF16 if k in "NVIDIA H100 PCIe") == "H100 PCIe"


@pytest.mark.slow
def test_the_activation_checkpointing_benchmark_measures_both_settings_in_fresh_processes(tmp_path: Path) -> None:
    out = tmp_path / "ac.json"
    script = BENCHMARKS / "activation_checkpointing.py"
    argv = [sys.executable, str(script), "--tiny", "--repeats", "1", "--steps", "1", "--out", str(out)]
    table = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    assert "| **on / off** |" in table
    result = json.loads(out.read_text())
    assert set(result["median"]) == {"off", "on"}
    assert all(m["peak_allocated_bytes"] > m["in_step_bytes"] > 0 for m in result["median"].values())
