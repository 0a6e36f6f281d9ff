"""The scheduler's Prometheus series.

Occupancy (running, waiting, KV blocks, preemptions, leadership) is read from
the live state at scrape time, so the iteration loop pays nothing for it; the
per-iteration histograms are observed once per iteration, labelled by policy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sarathi_serve.common.metrics import LATENCY_BUCKETS
from sarathi_serve.scheduler.policies.sarathi import SarathiPolicy

if TYPE_CHECKING:
    from sarathi_serve.scheduler.front import SchedulerFront

_STEP_BUCKETS = (0.001, 0.0025, 0.005, *LATENCY_BUCKETS[1:])
_RATIO_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)


class SchedulerMetrics:
    def __init__(self, scheduler_id: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.iterations = Counter(
            "sarathi_scheduler_iterations", "Iterations run", ["policy"], registry=r
        )
        self.tokens = Counter(
            "sarathi_scheduler_tokens", "Tokens scheduled", ["policy", "kind"], registry=r
        )
        self.step_time = Histogram(
            "sarathi_scheduler_batch_execution_seconds", "Worker time of an iteration",
            ["policy"], buckets=_STEP_BUCKETS, registry=r,
        )  # fmt: skip
        self.overhead = Histogram(
            "sarathi_scheduler_overhead_seconds",
            "Scheduler loop time of an iteration (planning, applying the result, waiting for "
            "the previous iteration's Redis write); it runs while the worker computes",
            ["policy"], buckets=_OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.worker_wait = Histogram(
            "sarathi_scheduler_worker_wait_seconds",
            "How long the worker waited for an iteration's plan after its previous result: "
            "the control plane between two steps",
            ["policy"], buckets=_OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_time = Histogram(
            "sarathi_scheduler_queue_seconds", "Arrival to first scheduled", ["policy"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.stage_busy = Counter(
            "sarathi_scheduler_pipeline_stage_busy_seconds",
            "A pipelined worker's compute time, per stage", ["policy", "stage"], registry=r,
        )  # fmt: skip
        self.stage_idle = Counter(
            "sarathi_scheduler_pipeline_stage_idle_seconds",
            "A pipelined worker's idle time per stage while requests were running "
            "(pipeline bubbles)", ["policy", "stage"], registry=r,
        )  # fmt: skip
        self.bubble = Histogram(
            "sarathi_scheduler_pipeline_bubble_ratio",
            "Per micro-batch and stage: the stage's idle time before it / (idle + compute)",
            ["policy", "stage"], buckets=_RATIO_BUCKETS, registry=r,
        )  # fmt: skip
        self._occupancy = _Occupancy(scheduler_id)
        r.register(self._occupancy)

    def watch(self, front: Callable[[], SchedulerFront | None]) -> None:
        """Occupancy comes from `front()` at scrape time (None: a standby)."""
        self._occupancy.front = front

    def iteration(
        self,
        policy: str,
        num_prefill: int,
        num_decode: int,
        execution_s: float,
        overhead_s: float,
        worker_wait_s: float,
        queue_times: list[float],
    ) -> None:
        self.iterations.labels(policy).inc()
        self.tokens.labels(policy, "prefill").inc(num_prefill)
        self.tokens.labels(policy, "decode").inc(num_decode)
        self.step_time.labels(policy).observe(execution_s)
        self.overhead.labels(policy).observe(overhead_s)
        self.worker_wait.labels(policy).observe(worker_wait_s)
        queue = self.queue_time.labels(policy)
        for seconds in queue_times:
            queue.observe(seconds)

    def stages(self, policy: str, busy_ms: Sequence[float], idle_ms: Sequence[float]) -> None:
        """A pipelined worker's micro-batch: each stage's compute and idle time before it."""
        for stage, (busy, idle) in enumerate(zip(busy_ms, idle_ms, strict=True)):
            labels = (policy, str(stage))
            self.stage_busy.labels(*labels).inc(busy / 1e3)
            self.stage_idle.labels(*labels).inc(idle / 1e3)
            self.bubble.labels(*labels).observe(idle / (busy + idle) if busy + idle else 0.0)


class _Occupancy(Collector):
    def __init__(self, scheduler_id: str):
        self.scheduler_id = scheduler_id
        self.front: Callable[[], SchedulerFront | None] = lambda: None

    def collect(self) -> Iterator[Metric]:
        front = self.front()
        leader = GaugeMetricFamily(
            "sarathi_scheduler_is_leader", "1 on the leader", labels=["scheduler_id"]
        )
        leader.add_metric([self.scheduler_id], float(front is not None))
        yield leader
        if front is None:
            return
        total = front.occupancy
        labels = [front.policy.name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["policy"])
            family.add_metric(labels, value)
            return family

        yield gauge("sarathi_scheduler_running_requests", "Running", total.running)
        yield gauge("sarathi_scheduler_waiting_requests", "Waiting", total.waiting)
        yield gauge(
            "sarathi_scheduler_oldest_waiting_seconds",
            "Age of the oldest waiting request, since its arrival (0: none waits)",
            max(time.time() - total.oldest_waiting_arrival, 0.0) if total.waiting else 0.0,
        )
        yield gauge(
            "sarathi_scheduler_kv_blocks_total", "KV blocks of all workers", total.total_kv_blocks
        )
        yield gauge(
            "sarathi_scheduler_kv_usage_ratio", "Fraction of KV blocks in use",
            (total.total_kv_blocks - total.free_kv_blocks) / max(total.total_kv_blocks, 1),
        )  # fmt: skip
        yield gauge("sarathi_scheduler_workers", "Attached workers", front.num_workers)
        yield gauge(
            "sarathi_scheduler_prefix_cache_blocks", "Full KV blocks in the prefix cache",
            total.cached_kv_blocks,
        )  # fmt: skip
        for name, doc, value in (
            ("sarathi_scheduler_preemptions", "Recomputes forced by a lack of KV blocks",
             total.preemptions),
            ("sarathi_scheduler_finished_requests", "Requests ended", front.stats.num_finished),
            ("sarathi_scheduler_prefix_cache_queries",
             "Prompt tokens looked up in the prefix cache", total.prefix_cache_queries),
            ("sarathi_scheduler_prefix_cache_hits",
             "Prompt tokens found in the prefix cache", total.prefix_cache_hits),
        ):  # fmt: skip
            counter = CounterMetricFamily(name, doc, labels=["policy"])
            counter.add_metric(labels, value)
            yield counter
        yield from _tail_series(front, labels)


def _tail_series(front: SchedulerFront, labels: list[str]) -> Iterator[Metric]:
    """With an SLO-driven budget: how often decoding clients waited past the target."""
    guards = [r.policy.guard for r in front.replicas if isinstance(r.policy, SarathiPolicy)]
    tails = [g for g in guards if g is not None]
    if not tails:
        return
    for name, doc, value in (
        ("sarathi_scheduler_tbt_intervals", "Intervals between two results that decoding "
         "requests waited (one per decode; with --batch-priority, interactive ones only)",
         sum(g.num_intervals for g in tails)),
        ("sarathi_scheduler_tbt_target_misses", "Of them, longer than --target-tbt-ms",
         sum(g.num_missed for g in tails)),
        ("sarathi_scheduler_tbt_target_excess_seconds", "Their total time past the target",
         sum(g.missed_by_ms for g in tails) / 1e3),
    ):  # fmt: skip
        counter = CounterMetricFamily(name, doc, labels=["policy"])
        counter.add_metric(labels, value)
        yield counter
    for name, doc, value in (
        ("sarathi_scheduler_tbt_target_seconds", "The SLO-driven budget's target",
         tails[0].target_ms / 1e3),
        ("sarathi_scheduler_step_target_seconds", "The predicted step time budgets are "
         "fitted to: the target less the tail margin (mean of replicas)",
         sum(g.step_target_ms for g in tails) / len(tails) / 1e3),
    ):  # fmt: skip
        family = GaugeMetricFamily(name, doc, labels=["policy"])
        family.add_metric(labels, value)
        yield family
