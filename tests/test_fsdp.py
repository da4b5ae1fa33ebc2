"""FSDP with the layer graph as its unit (``trainer=fsdp``, and ``trainer=fsdp_sim`` on 2 CPU processes over gloo):
the same steps as one process with the same global batch, and weight decay on exactly the tensors one process and
DDP decay, although FSDP hands the optimizer 1-D shards (the decision is made from names before wrapping)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict
from torch import nn

import tfgraph
from tests.test_distributed import config, text_file
from tests.test_tasks import OPTIMIZER, make_task
from tests.test_train import StopAt
from tfgraph.graph import LayerGraph
from tfgraph.tasks import load_checkpoint
from tfgraph.tasks.optim import build_optimizer, decay_plan, unwrapped_name
from tfgraph.tasks.strategies import LayerFSDP, mixed_precision_policy
from tfgraph.train import build_trainer, train


def decayed_elements(optimizer: torch.optim.Optimizer) -> int:
    return sum(p.numel() for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"])


class Sharded(nn.Module):
    """What FSDP with use_orig_params makes of a module's parameters, as far as an optimizer sees: each a 1-D
    shard, under a ``_fsdp_wrapped_module`` segment of its name."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._fsdp_wrapped_module = module
        for sub in module.modules():
            for name, param in list(sub.named_parameters(recurse=False)):
                setattr(sub, name, nn.Parameter(param.detach().flatten()[: max(1, param.numel() // 2)]))


def test_weight_decay_is_decided_by_name_before_wrapping() -> None:
    task = make_task("causal_lm", "gpt2_tiny")
    one = build_optimizer(task, OPTIMIZER)
    assert decayed_elements(one) == sum(p.numel() for p in task.parameters() if p.dim() >= 2) > 0
    plan = decay_plan(task)
    sharded = Sharded(task)
    assert all(p.dim() == 1 for p in sharded.parameters())
    assert decayed_elements(build_optimizer(sharded, OPTIMIZER)) == 0  # by shape, as before: nothing decays
    wrapped = build_optimizer(sharded, OPTIMIZER, plan=plan)
    names = {id(p): unwrapped_name(n) for n, p in sharded.named_parameters()}
    decayed = {names[id(p)] for g in wrapped.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    unwrapped = make_task("causal_lm", "gpt2_tiny").named_parameters(remove_duplicate=False)
    assert decayed == {n for n, p in unwrapped if p.dim() >= 2}  # the tied head's weight too (Sharded untied it)
    with pytest.raises(RuntimeError, match="no weight-decay decision for parameter"):
        build_optimizer(task, OPTIMIZER, plan={})


def test_the_strategy_wraps_each_layer_graph_and_checkpoints_through_it() -> None:
    plain = LayerFSDP()
    assert LayerGraph in plain.kwargs["auto_wrap_policy"]._module_classes
    assert not plain._activation_checkpointing_kwargs
    checkpointed = LayerFSDP(activation_checkpointing=True)
    assert LayerGraph in checkpointed._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes
    policy = LayerFSDP(mixed_precision={"param_dtype": "bfloat16", "reduce_dtype": "float32"}).mixed_precision
    assert (policy.param_dtype, policy.reduce_dtype, policy.buffer_dtype) == (torch.bfloat16, torch.float32, None)


def test_a_wrong_mixed_precision_policy_is_a_config_error_naming_its_key() -> None:
    with pytest.raises(tfgraph.ConfigError) as err:
        mixed_precision_policy({"param_dtype": "bf16", "grad_dtype": "float32"})
    assert "trainer.strategy.mixed_precision.param_dtype: expected one of float32, bfloat16, float16" in str(err.value)
    assert "trainer.strategy.mixed_precision.grad_dtype: unknown key" in str(err.value)
    cfg = tfgraph.compose(["trainer=fsdp_sim", "trainer.strategy.mixed_precision={param_dtype: half}", "~logger"])
    with pytest.raises(tfgraph.ConfigError, match="mixed_precision.param_dtype"):
        build_trainer(cfg)


class RecordDecay(pl.Callback):
    """Write, per rank, the unwrapped names of the parameters the optimizer decays and how many elements of them
    this rank holds (``<path>.<rank>``)."""

    def __init__(self, *, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        names = {id(p): unwrapped_name(n) for n, p in pl_module.named_parameters()}
        decayed = [p for g in trainer.optimizers[0].param_groups if g["weight_decay"] > 0 for p in g["params"]]
        sizes = {names[id(p)]: p.numel() for p in decayed}
        record = {"names": sorted(sizes), "elements": sum(sizes.values()), "sizes": sizes}
        Path(f"{self.path}.{trainer.global_rank}").write_text(json.dumps(record))


def run(out: Path, data: Path, *overrides: str) -> list[dict]:
    cfg = config(out, data, "optimizer.weight_decay=0.1", *overrides)
    with open_dict(cfg):
        cfg.callbacks.decay = {"_target_": f"{__name__}.RecordDecay", "path": str(out / "decay.json")}
    train(cfg)
    return [json.loads(p.read_text()) for p in sorted(out.glob("decay.json.*"))]


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_takes_the_steps_of_one_process_and_decays_the_same_tensors(tmp_path: Path) -> None:
    data = text_file(tmp_path / "text.txt")
    (one,) = run(tmp_path / "one", data, "trainer=cpu", "data.batch_size=8")
    ddp = run(tmp_path / "ddp", data, "trainer=ddp_sim", "data.batch_size=4")
    fsdp = run(tmp_path / "fsdp", data, "trainer=fsdp_sim", "data.batch_size=4")
    assert one["elements"] > 0 and all(n.endswith("weight") for n in one["names"])
    assert [r["names"] for r in ddp] == [one["names"]] * 2 and [r["elements"] for r in ddp] == [one["elements"]] * 2
    assert [r["names"] for r in fsdp] == [one["names"]] * 2  # every rank decays its shard of each matrix
    assert sum(r["elements"] for r in fsdp) == one["elements"]  # the shards together: every decayed element once

    losses = {name: json.loads((tmp_path / name / "losses.json").read_text()) for name in ("one", "fsdp")}
    assert len(losses["fsdp"]) == 4 and losses["fsdp"] == pytest.approx(losses["one"], abs=1e-5)
    weights_one = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.ckpt")["state_dict"]
    weights_fsdp = load_checkpoint(tmp_path / "fsdp" / "checkpoints" / "last.ckpt")["state_dict"]
    assert weights_one.keys() == weights_fsdp.keys()  # a full state dict under the unwrapped names
    for name, value in weights_one.items():
        torch.testing.assert_close(weights_fsdp[name], value, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.slow
def test_fsdp_with_activation_checkpointing_through_the_strategy_takes_the_same_steps(tmp_path: Path) -> None:
    data = text_file(tmp_path / "text.txt")
    run(tmp_path / "one", data, "trainer=cpu", "data.batch_size=8")
    run(
        tmp_path / "ckpt",
        data,
        "trainer=fsdp_sim",
        "data.batch_size=4",
        "trainer.strategy.activation_checkpointing=true",
    )
    losses = {name: json.loads((tmp_path / name / "losses.json").read_text()) for name in ("one", "ckpt")}
    assert losses["ckpt"] == pytest.approx(losses["one"], abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["layers", "true"])
def test_fsdp_with_compiled_layers_takes_the_steps_of_one_eager_process(tmp_path: Path, mode: str) -> None:
    """``compile=layers`` compiles each layer graph inside its FSDP unit; ``compile=true`` the layer loop over the
    units: either way the steps one eager process takes."""
    data = text_file(tmp_path / "text.txt")
    run(tmp_path / "one", data, "trainer=cpu", "data.batch_size=8")
    run(tmp_path / "compiled", data, "trainer=fsdp_sim", "data.batch_size=4", f"compile={mode}")
    losses = {name: json.loads((tmp_path / name / "losses.json").read_text()) for name in ("one", "compiled")}
    assert len(losses["compiled"]) == 4 and losses["compiled"] == pytest.approx(losses["one"], abs=1e-4)


def stopped_and_resumed(tmp_path: Path, data: Path, stop: int, *settings: str) -> list[float]:
    """The losses of a run of 4 steps stopped after ``stop`` and resumed from its last.ckpt (those of the steps
    before the checkpoint, then the resumed run's)."""
    every_step = "callbacks.last_checkpoint.every_n_train_steps=1"
    first = config(tmp_path / "first", data, "optimizer.weight_decay=0.1", *settings, every_step)
    with open_dict(first):
        first.callbacks.stop = {"_target_": f"{StopAt.__module__}.StopAt", "step": stop}  # the schedule of 4 steps
    train(first)
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    done = load_checkpoint(checkpoint)["global_step"]
    assert 0 < done < 4
    run(tmp_path / "resumed", data, *settings, every_step, f"ckpt_path={checkpoint}")
    losses = {name: json.loads((tmp_path / name / "losses.json").read_text()) for name in ("first", "resumed")}
    return losses["first"][:done] + losses["resumed"]


def test_a_run_stopped_at_the_end_of_a_limited_epoch_resumes_with_the_next_one(tmp_path: Path) -> None:
    """Epochs of 2 batches (``overfit_batches=2``, of a loader that holds more): stopped after the second step, the
    resumed run starts the next epoch, not 2 batches into it."""
    data = text_file(tmp_path / "text.txt")
    run(tmp_path / "one", data, "trainer=cpu", "data.batch_size=8")
    straight = json.loads((tmp_path / "one" / "losses.json").read_text())
    resumed = stopped_and_resumed(tmp_path, data, 2, "trainer=cpu", "data.batch_size=8")
    assert resumed == pytest.approx(straight, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [2, 3], ids=["at_an_epoch_end", "inside_an_epoch"])
def test_fsdp_resumes_from_its_whole_checkpoint_and_takes_the_uninterrupted_steps(tmp_path: Path, stop: int) -> None:
    """Stopped under FSDP after ``stop`` of 4 steps (epochs of 2 batches), then resumed from its last.ckpt (model and
    AdamW state gathered whole): the four losses of one process never interrupted."""
    data = text_file(tmp_path / "text.txt")
    run(tmp_path / "one", data, "trainer=cpu", "data.batch_size=8")
    straight = json.loads((tmp_path / "one" / "losses.json").read_text())
    resumed = stopped_and_resumed(tmp_path, data, stop, "trainer=fsdp_sim", "data.batch_size=4")
    assert resumed == pytest.approx(straight, abs=1e-5)


def test_a_whole_optimizer_state_is_keyed_by_position_in_the_groups_as_one_process_keys_it() -> None:
    """The decay groups reorder the parameters (the optimizer's positions are not ``model.parameters()``' order, which
    Lightning's FSDP keys by): the state written by position and read back by name puts every moment on its own
    parameter, and one process's ``optimizer.state_dict()`` reads the same way."""
    from tfgraph.tasks.strategies import by_name, by_position

    task = make_task("causal_lm", "gpt2_tiny")
    optimizer = build_optimizer(task, OPTIMIZER)
    for p in task.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    in_groups = [p for g in optimizer.param_groups for p in g["params"]]
    assert [id(p) for p in in_groups] != [id(p) for p in task.parameters()]  # reordered by the decay groups
    names = {id(p): n for n, p in task.named_parameters()}
    standard = optimizer.state_dict()  # one process's: keyed by position in the groups
    named = by_name(standard, optimizer, task)
    for p in in_groups:
        torch.testing.assert_close(named["state"][names[id(p)]]["exp_avg"], optimizer.state[p]["exp_avg"])
    assert [len(g["params"]) for g in named["param_groups"]] == [len(g["params"]) for g in optimizer.param_groups]
    again = by_position(named)  # what the strategy writes from FSDP's name-keyed state
    assert again["param_groups"] == [{**g} for g in standard["param_groups"]]
    assert all(torch.equal(again["state"][i]["exp_avg"], s["exp_avg"]) for i, s in standard["state"].items())
