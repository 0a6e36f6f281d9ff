"""The worker's Prometheus series: an Engine wrapper that times every step."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sarathi_serve.common.step import StepPlan, StepResult
from sarathi_serve.worker.submit import Deliver, Engine

_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3,
                 0.5, 0.75, 1.0, 2.0, 5.0)  # fmt: skip


class MeteredEngine:
    def __init__(
        self, engine: Engine, num_kv_blocks: int, registry: CollectorRegistry | None = None
    ):
        self.engine = engine
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.step_time = Histogram(
            "sarathi_worker_step_seconds", "Forward + sampling of one plan",
            buckets=_STEP_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter("sarathi_worker_tokens", "Tokens computed", registry=r)
        self.sampled = Counter("sarathi_worker_sampled_tokens", "Tokens sampled", registry=r)
        Gauge("sarathi_worker_kv_blocks", "KV cache blocks", registry=r).set(num_kv_blocks)
        self._started: dict[int, float] = {}  # step id -> monotonic seconds, while it runs

    def running_for(self, now: float) -> float:
        """How long the oldest step running now has run (0: none runs)."""
        started = min(tuple(self._started.values()), default=None)  # a few at most
        return 0.0 if started is None else now - started

    def submit(self, plan: StepPlan, deliver: Deliver) -> None:
        step_id = plan.step_id
        self._started[step_id] = time.monotonic()

        def observe(result: StepResult) -> None:
            self._started.pop(step_id, None)
            if plan.chunks and not result.error:
                self.step_time.observe(result.execution_ms / 1e3)
                self.tokens.inc(sum(c.num_tokens for c in plan.chunks))
                self.sampled.inc(len(result.sampled))
            deliver(result)

        try:
            self.engine.submit(plan, observe)
        except BaseException:
            self._started.pop(step_id, None)
            raise

    def reset(self) -> None:
        self.engine.reset()


def stage_registry(stage: int, num_stages: int) -> CollectorRegistry:
    """The series of a process that hosts a later pipeline stage (its steps are counted
    on stage 0's, with every stage's time in the scheduler's bubble series)."""
    registry = CollectorRegistry()
    gauge = Gauge(
        "sarathi_worker_pipeline_stage", "The pipeline stage this process hosts",
        ["num_stages"], registry=registry,
    )  # fmt: skip
    gauge.labels(str(num_stages)).set(stage)
    return registry
