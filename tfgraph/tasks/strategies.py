"""Lightning strategies as tfgraph runs them.

``SpawnedDDP`` is Lightning's ``DDPStrategy`` that leaves its spawned processes the way they came: each worker
destroys its process group when the stage ends, before the process exits. Lightning leaves the group open,
and a gloo group still open at interpreter exit can abort the worker (``terminate called without an active
exception``, SIGABRT) after the stage itself has finished, which fails the whole run.

``LayerFSDP`` is Lightning's ``FSDPStrategy`` with the layer graph as the unit of sharding (``trainer=fsdp``):
each :class:`~tfgraph.graph.LayerGraph` is its own FSDP unit, its parameters gathered for its forward and backward
only, and optionally checkpointed inside that unit; a mixed-precision policy by dtype names. With
``start_method=spawn`` it runs in processes spawned from this one, on CPUs too (``trainer=fsdp_sim``, over gloo),
for testing the sharded code paths.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy
from pytorch_lightning.strategies.fsdp import _move_torchmetrics_to_device, _setup_activation_checkpointing
from pytorch_lightning.strategies.launchers import _MultiProcessingLauncher
from torch import nn

from tfgraph.graph import LayerGraph
from tfgraph.models.transformer import Stack
from tfgraph.registry import ConfigError
from tfgraph.tasks.optim import unwrapped_name

log = logging.getLogger(__name__)
PRECISION_KEYS = ("param_dtype", "reduce_dtype", "buffer_dtype")
DTYPES = ("float32", "bfloat16", "float16")


def close_spawned_group(start_method: str | None) -> None:
    """Destroy the process group of a spawned worker once every rank is done with it."""
    if start_method in ("spawn", "forkserver", "fork") and dist.is_available() and dist.is_initialized():
        dist.barrier()  # every rank is done with the group before any rank closes it
        dist.destroy_process_group()


class CleanExitLauncher(_MultiProcessingLauncher):
    """Lightning's spawning launcher whose workers, once their results are handed over, end at once
    (``os._exit(0)`` after flushing the streams and logs) instead of running the interpreter's exit: a C++ thread
    still alive there (gloo's) aborts the process with ``terminate called without an active exception`` after the
    stage itself has finished, intermittently, even with the process group destroyed."""

    def _wrapping_function(self, *args: Any, **kwargs: Any) -> None:
        super()._wrapping_function(*args, **kwargs)
        if self._start_method == "spawn":
            sys.stdout.flush()
            sys.stderr.flush()
            logging.shutdown()
            os._exit(0)


class SpawnedDDP(DDPStrategy):
    """DDP whose workers close their process group at teardown and exit cleanly (``trainer=ddp_sim``)."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if self._start_method == "spawn":
            self._launcher = CleanExitLauncher(self, start_method=self._start_method)

    def teardown(self) -> None:
        super().teardown()
        close_spawned_group(self._start_method)


def mixed_precision_policy(cfg: Mapping[str, Any] | None, path: str = "trainer.strategy.mixed_precision") -> Any:
    """FSDP's ``MixedPrecision`` from dtype names (``{param_dtype: bfloat16, reduce_dtype: float32, buffer_dtype:
    float32}``; a key left out stays as the parameters are), or ``None`` for none; a ConfigError names a wrong key
    or dtype."""
    from torch.distributed.fsdp import MixedPrecision

    if cfg is None:
        return None
    if not isinstance(cfg, Mapping):
        raise ConfigError.at(path, f"expected a mapping of {', '.join(PRECISION_KEYS)} to dtype names, got {cfg!r}")
    problems = [
        (f"{path}.{key}", f"unknown key; the keys are {', '.join(PRECISION_KEYS)}")
        for key in cfg
        if key not in PRECISION_KEYS
    ]
    problems += [
        (f"{path}.{key}", f"expected one of {', '.join(DTYPES)}, got {value!r}")
        for key, value in cfg.items()
        if key in PRECISION_KEYS and value is not None and value not in DTYPES
    ]
    if problems:
        raise ConfigError(problems)
    return MixedPrecision(**{key: getattr(torch, value) for key, value in cfg.items() if value is not None})


class SpawnedFSDPLauncher(CleanExitLauncher):
    """Lightning's spawning launcher, handing the main process the whole model gathered from the shards (its own
    hands over ``lightning_module.state_dict()``, which under FSDP holds each rank's 1-D shards)."""

    def _collect_rank_zero_results(self, trainer: Any, results: Any) -> Any:
        module = trainer.lightning_module
        whole = self._strategy.lightning_module_state_dict()  # every rank takes part in the gathering
        module.state_dict = lambda *args, **kwargs: whole
        try:
            return super()._collect_rank_zero_results(trainer, results)
        finally:
            del module.state_dict


class LayerFSDP(FSDPStrategy):
    """FSDP with each layer graph its own unit (``trainer=fsdp``; ``trainer=fsdp_sim`` on CPU processes).

    Weight decay is decided from parameter names before wrapping (:func:`tfgraph.tasks.optim.decayed_names`), so
    the sharded 1-D views FSDP hands the optimizer decay exactly what one process decays.

    Args:
        activation_checkpointing: recompute each layer graph in the backward pass, inside its FSDP unit (torch's
            non-reentrant checkpoint wrapper). This replaces ``model.activation_checkpointing``, which is turned
            off under it so that no layer is recomputed twice.
        mixed_precision: dtype names for FSDP's ``MixedPrecision`` (:func:`mixed_precision_policy`), e.g. bf16
            compute with float32 gradient reduction; ``None``: as ``trainer.precision`` says.
        start_method: ``None``: Lightning's launcher (the script started once per device, or by the cluster);
            ``spawn``: workers spawned from this process, which also runs on CPUs.
        **kwargs: Lightning's ``FSDPStrategy`` arguments (``sharding_strategy``, ``state_dict_type``,
            ``cpu_offload``, ``process_group_backend``, ...) and FSDP's own.
    """

    def __init__(
        self,
        *,
        activation_checkpointing: bool = False,
        mixed_precision: Mapping[str, Any] | None = None,
        start_method: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("auto_wrap_policy", {LayerGraph})
        if activation_checkpointing:
            kwargs.setdefault("activation_checkpointing_policy", {LayerGraph})
        super().__init__(mixed_precision=mixed_precision_policy(mixed_precision), **kwargs)
        self.start_method = start_method

    def _configure_launcher(self) -> None:
        if self.start_method is None:
            super()._configure_launcher()
        else:
            self._launcher = SpawnedFSDPLauncher(self, start_method=self.start_method)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self._activation_checkpointing_kwargs:
            for stack in model.modules():
                if isinstance(stack, Stack) and stack.activation_checkpointing:
                    log.info("activation checkpointing by the FSDP strategy; model.activation_checkpointing is off")
                    stack.activation_checkpointing = False
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        # Lightning hands FSDP device_id=None on a CPU, which FSDP refuses; as Lightning's, with the CPU named
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device,
            **self.kwargs,
        )
        _move_torchmetrics_to_device(model, self.root_device)
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model

    def lightning_module_state_dict(self) -> dict[str, Any]:
        if not self._full_on_cpu():
            return super().lightning_module_state_dict()
        with full_state_dict_in_place(self.model):
            return self.model.state_dict()

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """A whole checkpoint's optimizer state in the standard format: keyed by each parameter's position in the
        optimizer's groups, as one process's ``optimizer.state_dict()`` is (Lightning keys it by the order of
        ``model.parameters()``, which differs once the weight-decay groups reorder the parameters: a resume in one
        process then gives one tensor's moments to another)."""
        if self._state_dict_type != "full":
            return super().optimizer_state(optimizer)
        from pytorch_lightning.strategies.fsdp import _get_full_state_dict_context
        from torch.distributed.fsdp import FullyShardedDataParallel

        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's own
        if self._full_on_cpu():
            context = full_state_dict_in_place(self.model)
        else:
            context = _get_full_state_dict_context(self.model, world_size=self.world_size)
        with context:
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
        return by_position(state) if self.global_rank == 0 else state

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """A whole checkpoint (one file) loads as Lightning loads it, its optimizer state read by position in the
        optimizer's groups (:meth:`optimizer_state`): from this strategy, from DDP or from one process alike."""
        from pathlib import Path

        path = Path(self.broadcast(checkpoint_path))
        if not path.is_file():
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        from pytorch_lightning.strategies.fsdp import (  # as Lightning's own load_checkpoint has them
            _get_full_state_dict_context,
            _lazy_load,
            _load_raw_module_state,
            _materialize_tensors,
        )
        from pytorch_lightning.trainer.states import TrainerFn
        from torch.distributed.fsdp import FullyShardedDataParallel

        checkpoint = _lazy_load(path)
        module = self.lightning_module
        _load_raw_module_state(
            checkpoint.pop("state_dict"), module=self.model, world_size=self.world_size, strict=module.strict_loading
        )
        checkpoint = _materialize_tensors(checkpoint)
        states = checkpoint.get("optimizer_states")
        if states is None or module.trainer.state.fn != TrainerFn.FITTING:
            return checkpoint
        if len(states) != len(self.optimizers):
            raise RuntimeError(
                f"the checkpoint holds the state of {len(states)} optimizers, the run has {len(self.optimizers)}"
            )
        with _get_full_state_dict_context(self.model, world_size=self.world_size, rank0_only=False):
            for optimizer, state in zip(self.optimizers, states, strict=True):
                named = by_name(state, optimizer, self.model)
                optimizer.load_state_dict(
                    FullyShardedDataParallel.optim_state_dict_to_load(
                        model=self.model, optim=optimizer, optim_state_dict=named
                    )
                )
        return checkpoint

    def _full_on_cpu(self) -> bool:
        """Whether whole-model checkpoints are gathered on CPU processes, where Lightning's offload to the CPU
        (``offload_to_cpu=True``) frees the gathered parameters under the copy and crashes the process."""
        return self._state_dict_type == "full" and self.root_device.type == "cpu"

    def teardown(self) -> None:
        super().teardown()
        close_spawned_group(self.start_method)


def by_position(state: Mapping[str, Any]) -> dict[str, Any]:
    """FSDP's whole optimizer state (keyed by parameter names) keyed instead by each parameter's position in the
    optimizer's groups, the order ``optimizer.state_dict()`` uses."""
    order = [name for group in state["param_groups"] for name in group["params"]]
    position = {name: i for i, name in enumerate(order)}
    return {
        "state": {position[name]: value for name, value in state["state"].items()},
        "param_groups": [{**g, "params": [position[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def by_name(state: Mapping[str, Any], optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """A standard optimizer state (keyed by position in the groups) keyed by the names of the parameters the
    optimizer holds at those positions, as FSDP loads it; a state already keyed by name is returned as it is."""
    if not state["state"] or not isinstance(next(iter(state["state"])), int):
        return dict(state)
    names = {id(p): unwrapped_name(n) for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    saved = [i for group in state["param_groups"] for i in group["params"]]
    if len(saved) != len(order):
        raise RuntimeError(
            f"the checkpoint's optimizer holds {len(saved)} parameters, this run's {len(order)}: a different model "
            "or weight-decay grouping cannot take its state"
        )
    return {
        "state": {order[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]],
    }


def full_state_dict_in_place(model: nn.Module) -> Any:
    """FSDP's whole-model state-dict context, gathered to rank 0 where the shards are (no offload)."""
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType
    from torch.distributed.fsdp.api import FullOptimStateDictConfig

    return FullyShardedDataParallel.state_dict_type(
        module=model,
        state_dict_type=StateDictType.FULL_STATE_DICT,
        state_dict_config=FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
        optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),
    )
