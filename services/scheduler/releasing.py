"""Releasing an iteration: persist it to Redis, then send its tokens to the gateways.

Tokens leave only once Redis holds them (a new leader resumes from Redis, so a
gateway never sees a token that a failover could change). Releases run one after
another in the order their iterations ended, whichever replica ran them: a
request moved to another replica never has a later token sent before an earlier
one. A release that fails fails every release after it (a fenced-off leader writes
nothing more).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from redis.exceptions import RedisError

from sarathi_serve.common.step import StepResult
from sarathi_serve.scheduler.iteration import PlannedStep, RequestUpdate
from sarathi_serve.scheduler.metrics import SchedulerMetrics
from sarathi_serve.scheduler.request import Request, StopReason
from sarathi_serve.scheduler.sessions import Sessions
from sarathi_serve.scheduler.stats import IterationStats, StatsRing
from sarathi_serve.scheduler.store import RedisStore

log = logging.getLogger(__name__)

_MAX_PERSIST_BACKOFF_S = 2.0


@dataclass(frozen=True, slots=True)
class Timing:
    """When an iteration started and what its control plane cost (seconds)."""

    start_time: float  # unix seconds
    scheduling_s: float  # policy + plan building
    control_s: float  # planning, applying, waiting for the previous release
    worker_wait_ms: float  # the worker's wait for this plan (0 when it had been idle)


@dataclass(frozen=True, slots=True)
class Iteration:
    """What one iteration of one replica releases."""

    planned: PlannedStep
    result: StepResult
    timing: Timing
    accepted: list[Request]  # new requests, persisted with this iteration
    updates: list[RequestUpdate]  # new tokens (and ends)
    ended: list[Request]  # ended without a token (aborts)
    replica: int = 0  # the replica that ran it

    @property
    def is_empty(self) -> bool:
        return not (self.updates or self.accepted or self.ended or self.planned.plan.chunks)


class Releaser:
    """Releases the iterations of every replica, in one chain."""

    def __init__(
        self,
        sessions: Sessions,
        store: RedisStore | None,
        stats: StatsRing,
        metrics: SchedulerMetrics | None = None,
    ):
        self.sessions = sessions
        self.store = store
        self.stats = stats
        self.metrics = metrics
        self._last: asyncio.Task[None] | None = None

    def release(self, iteration: Iteration) -> asyncio.Task[None]:
        """Queues the release after every release queued before it."""
        previous = self._last

        async def in_order() -> None:
            if previous is not None:
                await previous
            await self._release(iteration)

        self._last = asyncio.ensure_future(in_order())
        return self._last

    async def _release(self, it: Iteration) -> None:
        t_release = time.perf_counter()
        await self._persist(it)
        persist_s = time.perf_counter() - t_release
        for update in it.updates:
            update.request.num_released = update.first_index + len(update.token_ids)
            if update.stop_reason is not None:
                self._finished(update.request, update.stop_reason.name)
        for request in it.ended:
            self._finished(request, (request.stop_reason or StopReason.ABORTED).name)
        if it.planned.plan.chunks:
            self._record(it, persist_s)
        self.sessions.dispatch(it.updates, it.ended)

    async def _persist(self, it: Iteration) -> None:
        """Tokens are released only once they are in Redis: retry while it is down."""
        if self.store is None:
            return
        backoff = 0.05
        while True:
            try:
                await self.store.persist_iteration(it.accepted, it.updates, it.ended)
                return
            except (RedisError, OSError) as exc:
                log.warning("redis write failed (%s); holding tokens, retry in %.2fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_PERSIST_BACKOFF_S)

    def _finished(self, request: Request, reason: str) -> None:
        self.stats.num_finished += 1
        log.log(
            logging.INFO if request.error is None else logging.WARNING,
            "request %s finished (%s): %d output tokens%s",
            request.request_id,
            reason,
            len(request.output_token_ids),
            "" if request.error is None else f"; {request.error}",
            extra={"request_id": request.request_id},
        )

    def _record(self, it: Iteration, persist_s: float) -> None:
        planned, timing = it.planned, it.timing
        if self.metrics is not None:
            self.metrics.iteration(
                planned.policy,
                planned.num_prefill_tokens,
                planned.num_decode_tokens,
                it.result.execution_ms / 1e3,
                timing.control_s,
                timing.worker_wait_ms / 1e3,
                [
                    r.first_scheduled_time - r.arrival_time
                    for r in planned.admitted
                    if r.first_scheduled_time is not None
                ],
            )
            if it.result.stage_busy_ms:
                self.metrics.stages(
                    planned.policy, it.result.stage_busy_ms, it.result.stage_idle_ms
                )
        self.stats.record(
            IterationStats(
                step_id=planned.plan.step_id,
                batch_size=len(planned.plan.chunks),
                num_prefill_tokens=planned.num_prefill_tokens,
                num_decode_tokens=planned.num_decode_tokens,
                execution_ms=it.result.execution_ms,
                scheduling_ms=timing.scheduling_s * 1e3,
                persist_ms=persist_s * 1e3,
                worker_wait_ms=timing.worker_wait_ms,
                policy=planned.policy,
                token_budget=planned.token_budget,
                start_time=timing.start_time,
                replica=it.replica,
                stage_busy_ms=it.result.stage_busy_ms,
                stage_idle_ms=it.result.stage_idle_ms,
            )
        )


class ReleaseQueue:
    """One replica's releases: at most one of its iterations waits for its release."""

    def __init__(self, releaser: Releaser):
        self._releaser = releaser
        self._last: asyncio.Task[None] | None = None

    @property
    def pending(self) -> bool:
        return self._last is not None

    async def drain(self) -> None:
        """Waits for the last release (raising what it raised)."""
        last, self._last = self._last, None
        if last is not None:
            await last

    def put(self, iteration: Iteration) -> None:
        assert self._last is None, "drain() the previous release first"
        if not iteration.is_empty:
            self._last = self._releaser.release(iteration)
