"""Pipeline parallelism inside a worker group: each stage holds a contiguous range of
decoder layers, hidden states pass between stages with point-to-point sends.

A group of P stages x T tensor-parallel ranks has P * T processes; global rank
`stage * T + tp_rank`. Every rank keeps the embeddings (the first stage embeds the
step's tokens; the last one's LM head may be tied to them); the first stage's
output and each middle stage's go to the same tensor-parallel rank of the next
stage; the last stage applies the final norm and the LM head and samples. Each stage
allocates the KV cache of its own layers; the group reports the fewest blocks any
stage has. The stages run P micro-batches at once (`micro_batches.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PipelineStage:
    stage: int = 0
    num_stages: int = 1
    tp_size: int = 1  # tensor-parallel ranks inside each stage
    tp_rank: int = 0
    layer_split: tuple[int, ...] = ()  # layers per stage; (): as even as they divide

    def __post_init__(self) -> None:
        if not 0 <= self.stage < self.num_stages or not 0 <= self.tp_rank < self.tp_size:
            raise ValueError(
                f"stage {self.stage} rank {self.tp_rank} outside {self.num_stages} x {self.tp_size}"
            )
        if self.layer_split and (
            len(self.layer_split) != self.num_stages or min(self.layer_split) < 1
        ):
            raise ValueError(
                f"a layer split of {self.num_stages} stages needs {self.num_stages} counts "
                f">= 1, got {self.layer_split}"
            )

    @classmethod
    def of_rank(
        cls, rank: int, num_stages: int, tp_size: int, layer_split: tuple[int, ...] = ()
    ) -> PipelineStage:
        return cls(rank // tp_size, num_stages, tp_size, rank % tp_size, layer_split)

    @property
    def enabled(self) -> bool:
        return self.num_stages > 1

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.num_stages - 1

    def rank_of(self, stage: int) -> int:
        """The global rank of this tensor-parallel rank's peer in `stage`."""
        return stage * self.tp_size + self.tp_rank

    @property
    def output_rank(self) -> int:
        """The rank that broadcasts each step's output: the last stage's first."""
        return (self.num_stages - 1) * self.tp_size

    def layers(self, num_layers: int) -> range:
        """This stage's layers: contiguous; by `layer_split`, else the first stages one
        longer when P does not divide the layers."""
        if num_layers < self.num_stages:
            raise ValueError(f"{self.num_stages} pipeline stages for {num_layers} layers")
        split = self.layer_split
        if split:
            if sum(split) != num_layers:
                raise ValueError(
                    f"--pipeline-layers {','.join(map(str, split))} places {sum(split)} "
                    f"layers; the model has {num_layers}"
                )
            start = sum(split[: self.stage])
            return range(start, start + split[self.stage])
        base, extra = divmod(num_layers, self.num_stages)
        start = self.stage * base + min(self.stage, extra)
        return range(start, start + base + (self.stage < extra))


def cut_to_stage(model: nn.Module, stage: PipelineStage) -> range:
    """Keeps this stage's decoder layers (numbered from 0, as this stage's KV cache
    is), and on stages but the last no final norm; returns the global layer range."""
    inner: Any = model.model
    kept = stage.layers(len(inner.layers))
    layers = [inner.layers[i] for i in kept]
    for local, layer in enumerate(layers):
        layer.self_attn.layer_idx = local
    inner.layers = nn.ModuleList(layers)
    if not stage.last:
        inner.norm = nn.Identity()
    log.info(
        "pipeline stage %d of %d: layers %d-%d", stage.stage, stage.num_stages, kept[0], kept[-1]
    )
    return kept


@dataclass(frozen=True, slots=True)
class _NoLogits:
    logits: None = None


class StageForward:
    """The model's forward on one stage: embeds (first) or receives the hidden states,
    runs its layers and keeps its output in `outgoing` for the next stage (the caller
    sends it), or (last) returns the logits to keep."""

    def __init__(self, model: Any, stage: PipelineStage):
        self.model, self.stage = model, stage
        self.hidden_size = int(model.config.hidden_size)
        self.outgoing: torch.Tensor | None = None

    def __call__(self, *, input_ids: torch.Tensor, logits_to_keep: torch.Tensor, **kw: Any) -> Any:
        stage = self.stage
        inputs: dict[str, Any] = {"input_ids": input_ids}
        if not stage.first:
            dtype = self.model.get_input_embeddings().weight.dtype
            hidden = torch.empty(
                (1, input_ids.shape[1], self.hidden_size), dtype=dtype, device=input_ids.device
            )
            dist.recv(hidden, src=stage.rank_of(stage.stage - 1))
            inputs = {"inputs_embeds": hidden}
        if stage.last:
            return self.model(**inputs, logits_to_keep=logits_to_keep, **kw)
        out = self.model.model(**inputs, **kw)
        self.outgoing = out.last_hidden_state.contiguous()
        return _NoLogits()

    def take_outgoing(self) -> torch.Tensor | None:
        """The hidden states of the latest forward, for the next stage (once)."""
        hidden, self.outgoing = self.outgoing, None
        return hidden


def fewest_blocks(num_blocks: int, device: torch.device) -> int:
    """The KV blocks every stage has (stages of fewer layers fit more)."""
    value = torch.tensor([num_blocks], dtype=torch.long, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())


def stage_groups(stage: PipelineStage) -> Any:
    """Creates every stage's tensor-parallel group (each rank must create all of them,
    in the same order) and returns this rank's (None without tensor parallelism)."""
    if stage.tp_size == 1:
        return None
    groups = [
        dist.new_group([s * stage.tp_size + t for t in range(stage.tp_size)])
        for s in range(stage.num_stages)
    ]
    return groups[stage.stage]
