"""What one iteration of a replica plans and yields, and how full a replica is."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from sarathi_serve.common.step import StepPlan, TokenLogprobs
from sarathi_serve.scheduler.policies.step_model import StepShape
from sarathi_serve.scheduler.request import Request, StopReason


@dataclass(slots=True)  # not frozen: one per request per step, and frozen ones cost 3x to build
class RequestUpdate:
    """New tokens of one request in one iteration (and its end, if it ended)."""

    request: Request
    token_ids: tuple[int, ...]
    stop_reason: StopReason | None
    logprobs: tuple[TokenLogprobs, ...] = ()  # parallel to token_ids, when requested
    # index of token_ids[0] in the request's output (fixed here: the output grows on
    # while the update waits for its release)
    first_index: int = 0


@dataclass(frozen=True, slots=True)
class Occupancy:
    """How full a core (or, summed, the scheduler) is."""

    running: int = 0
    waiting: int = 0
    free_kv_blocks: int = 0
    total_kv_blocks: int = 0
    preemptions: int = 0
    cached_kv_blocks: int = 0
    prefix_cache_queries: int = 0  # tokens
    prefix_cache_hits: int = 0  # tokens
    oldest_waiting_arrival: float = math.inf  # unix seconds (inf: none waits)

    def __add__(self, other: Occupancy) -> Occupancy:
        """Counts add up; the oldest arrival is the older one."""
        oldest = min(self.oldest_waiting_arrival, other.oldest_waiting_arrival)
        counts = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in dataclasses.fields(self)
            if f.name != "oldest_waiting_arrival"
        }
        return Occupancy(**counts, oldest_waiting_arrival=oldest)


@dataclass(frozen=True, slots=True)
class PlannedStep:
    plan: StepPlan
    shape: StepShape  # what it computes, for the step-time models
    admitted: tuple[Request, ...]  # scheduled for the first time
    policy: str  # the policy that planned it, and its budget
    token_budget: int
    # The requests it computes, each with its incarnation (how often it had been
    # preempted): a token of the step counts only for the same incarnation.
    rows: dict[str, tuple[Request, int]] = dataclasses.field(default_factory=dict)

    @property
    def num_prefill_tokens(self) -> int:
        return self.shape.num_prefill

    @property
    def num_decode_tokens(self) -> int:
        return self.shape.num_decode


@dataclass(slots=True)
class Handover:
    """Requests leaving a replica. None holds KV blocks or a place on a worker."""

    requests: list[Request] = field(default_factory=list)  # first come, first served
    unpersisted: list[Request] = field(default_factory=list)  # of those, not in Redis yet
    ended: list[Request] = field(default_factory=list)  # aborted, end not released yet
