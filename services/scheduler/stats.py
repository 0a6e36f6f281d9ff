"""Per-iteration statistics, kept in a bounded ring."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IterationStats:
    step_id: int
    batch_size: int
    num_prefill_tokens: int
    num_decode_tokens: int
    execution_ms: float  # worker forward + sampling
    scheduling_ms: float  # policy + plan building
    persist_ms: float  # Redis round trip
    worker_wait_ms: float  # the worker's wait for this plan after its previous result
    policy: str
    token_budget: int
    start_time: float  # unix seconds
    replica: int = 0  # the replica it ran on


class StatsRing:
    def __init__(self, max_iterations: int = 10_000):
        self.iterations: deque[IterationStats] = deque(maxlen=max_iterations)
        self.num_finished = 0

    def record(self, stats: IterationStats) -> None:
        self.iterations.append(stats)

    def recent(self, limit: int = 0) -> list[IterationStats]:
        items = list(self.iterations)
        return items[-limit:] if limit else items
