"""What every scheduling policy takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sarathi_serve.scheduler.block_manager import BlockManager
from sarathi_serve.scheduler.request import Request
from sarathi_serve.scheduler.state import SchedulerState


@dataclass(slots=True)
class Schedule:
    """One iteration's decisions, in batch order."""

    chunks: list[tuple[Request, int]] = field(default_factory=list)  # (request, num tokens)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.chunks)


class Policy(Protocol):
    """Decides one iteration from plain state: no gRPC, no torch, no clock.

    It moves requests between `state.waiting` and `state.running` and allocates
    their KV blocks through `blocks`; the caller turns the result into a plan.
    """

    name: str
    token_budget: int

    def schedule(self, state: SchedulerState, blocks: BlockManager) -> Schedule: ...
