"""Per-iteration statistics, kept in a bounded ring."""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from sarathi_serve.common.step import StepResult


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
    stage_busy_ms: tuple[float, ...] = ()  # a pipelined worker: per stage
    stage_idle_ms: tuple[float, ...] = ()  # idle before it while requests were running


class StatsRing:
    def __init__(self, max_iterations: int = 10_000):
        self.iterations: deque[IterationStats] = deque(maxlen=max_iterations)
        self.num_finished = 0

    def record(self, stats: IterationStats) -> None:
        self.iterations.append(stats)

    def recent(self, limit: int = 0) -> list[IterationStats]:
        items = list(self.iterations)
        return items[-limit:] if limit else items


@dataclass(slots=True)
class StageTimes:
    """A pipelined replica's time per stage over its micro-batches: computing, and idle
    while requests were running (the pipeline's bubbles)."""

    busy_s: list[float] = field(default_factory=list)
    idle_s: list[float] = field(default_factory=list)

    def observe(self, result: StepResult, served: bool) -> StepResult:
        """Adds a micro-batch's stage times; returns the result to record. Idle time
        counts only when requests were running as it was planned (`served`): before
        that, the stages waited for requests, not for the pipeline."""
        if not result.stage_busy_ms:
            return result
        if not served:
            result = dataclasses.replace(result, stage_idle_ms=(0.0,) * len(result.stage_idle_ms))
        self.add(result.stage_busy_ms, result.stage_idle_ms)
        return result

    def add(self, busy_ms: Sequence[float], idle_ms: Sequence[float]) -> None:
        for times, new in ((self.busy_s, busy_ms), (self.idle_s, idle_ms)):
            times.extend([0.0] * (len(new) - len(times)))
            for stage, ms in enumerate(new):
                times[stage] += ms / 1e3

    @property
    def bubble_fractions(self) -> list[float]:
        """Per stage: idle / (busy + idle)."""
        pairs = zip(self.busy_s, self.idle_s, strict=True)
        return [idle / (busy + idle) if busy + idle else 0.0 for busy, idle in pairs]
