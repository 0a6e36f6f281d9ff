"""Tensor parallelism inside a worker group (or a pipeline stage of it, `pipeline.py`),
with torch.distributed.

Each rank holds a slice of every decoder layer (Megatron style): q/k/v and
gate/up projections split by output rows (whole attention heads per rank),
o/down projections split by input columns with an all-reduce of their output.
Embeddings, norms and the LM head stay whole, so every rank ends a step with the
same logits; samplers seeded alike then draw the same tokens without talking.
Rank 0 talks to the scheduler and broadcasts each command to the other ranks.
"""

from __future__ import annotations

import datetime
import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from sarathi_serve.common.step import StepPlan, StepResult
from sarathi_serve.worker.submit import StepByStep

log = logging.getLogger(__name__)

GROUP_TIMEOUT = datetime.timedelta(days=365)  # a rank may wait this long for its next command


@dataclass(frozen=True, slots=True)
class TensorParallel:
    rank: int = 0
    world_size: int = 1
    group: Any = field(default=None, compare=False)  # its process group (None: the default)

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside a group of {self.world_size}")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def check_divisible(config: Any, world_size: int) -> None:
    for name in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        value = getattr(config, name)
        if value % world_size:
            raise ValueError(
                f"tensor parallel size {world_size} does not divide the model's {name} ({value})"
            )


def shard_model(model: nn.Module, tp: TensorParallel) -> None:
    """Keeps this rank's slice of each decoder layer (in place)."""
    layers = model.model.layers  # type: ignore[union-attr]
    for layer in layers:  # type: ignore[union-attr]
        attn, mlp = layer.self_attn, layer.mlp
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            _keep_rows(proj, tp)
        for proj in (attn.o_proj, mlp.down_proj):
            _keep_columns(proj, tp)
            proj.register_forward_hook(functools.partial(_all_reduce_output, group=tp.group))


def _keep_rows(linear: nn.Linear, tp: TensorParallel) -> None:
    rows = linear.out_features // tp.world_size
    part = slice(tp.rank * rows, (tp.rank + 1) * rows)
    linear.weight = nn.Parameter(linear.weight.data[part].clone(), requires_grad=False)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data[part].clone(), requires_grad=False)
    linear.out_features = rows


def _keep_columns(linear: nn.Linear, tp: TensorParallel) -> None:
    cols = linear.in_features // tp.world_size
    part = slice(tp.rank * cols, (tp.rank + 1) * cols)
    linear.weight = nn.Parameter(linear.weight.data[:, part].clone(), requires_grad=False)
    if linear.bias is not None and tp.rank != 0:  # added once, by rank 0
        linear.bias = nn.Parameter(torch.zeros_like(linear.bias.data), requires_grad=False)
    linear.in_features = cols


def _all_reduce_output(
    module: nn.Module, args: Any, output: torch.Tensor, group: Any = None
) -> torch.Tensor:
    dist.all_reduce(output, group=group)
    return output


# ---- the group's command channel ---------------------------------------------


class Stepper(Protocol):
    def step(self, plan: StepPlan) -> StepResult: ...

    def reset(self) -> None: ...


class GroupLeader(StepByStep):
    """Rank 0's engine: every command is broadcast, then run locally like the others."""

    def __init__(self, engine: Stepper):
        self.engine = engine

    def step(self, plan: StepPlan) -> StepResult:
        _broadcast(("step", plan))
        return self.engine.step(plan)

    def reset(self) -> None:
        _broadcast(("reset", None))
        self.engine.reset()

    def stop(self) -> None:
        _broadcast(("stop", None))


def follow(engine: Stepper) -> None:
    """A rank > 0: runs the leader's commands until it says stop."""
    while True:
        command, plan = _receive()
        if command == "step":
            engine.step(plan)
        elif command == "reset":
            engine.reset()
        else:
            return


def _broadcast(message: tuple[str, StepPlan | None]) -> None:
    dist.broadcast_object_list([message], src=0)


def _receive() -> tuple[str, StepPlan]:
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    command, plan = box[0]
    return command, plan


def init_group(rank: int, world_size: int, init_method: str, device: str) -> None:
    """Joins the group; a rank may wait for its next command for days (an idle server)."""
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=GROUP_TIMEOUT,
    )
    log.info("rank %d of %d joined the %s group", rank, world_size, backend)


def shared_seed(seed: int | None) -> int:
    """Rank 0's seed, or a fresh one it picks, for every rank's sampler."""
    box = [seed if seed is not None else int(torch.randint(0, 2**62, ()).item())]
    dist.broadcast_object_list(box, src=0)
    return int(box[0])
