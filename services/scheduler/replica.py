"""One model replica: a worker, the scheduler core that plans for it, and its iteration loop.

Every replica has its own KV blocks and requests; the IterationLoop
(`loop.py`) owns the replicas, routes new requests to them and moves the
requests of a replica whose worker died to one that has a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from sarathi_serve.common.step import StepResult
from sarathi_serve.scheduler.core import PlannedStep, RequestUpdate, SchedulerCore
from sarathi_serve.scheduler.metrics import SchedulerMetrics
from sarathi_serve.scheduler.request import Request
from sarathi_serve.scheduler.sessions import SessionHub
from sarathi_serve.scheduler.stats import IterationStats, StatsRing
from sarathi_serve.scheduler.store import RedisStore
from sarathi_serve.scheduler.workers import WorkerLink, WorkerLost

log = logging.getLogger(__name__)

_MAX_PERSIST_BACKOFF_S = 2.0


class ReleaseChain:
    """Runs the iterations' releases (persist, then send the tokens) one after another,
    in the order the iterations ended, whichever replica ran them: a request moved to
    another replica never has a later token sent before an earlier one. A release that
    fails fails every release after it (a fenced-off leader writes nothing more)."""

    def __init__(self) -> None:
        self._last: asyncio.Task[None] | None = None

    def add(self, release: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        previous = self._last

        async def in_order() -> None:
            if previous is not None:
                await previous
            await release()

        self._last = asyncio.ensure_future(in_order())
        return self._last


@dataclass(frozen=True, slots=True)
class _Timing:
    """When an iteration started and what its control plane cost (seconds)."""

    start_time: float  # unix seconds
    scheduling_s: float  # policy + plan building
    control_s: float  # planning, applying, waiting for the previous release
    worker_wait_ms: float  # the worker's wait for this plan (0 after the replica idled)


@dataclass(slots=True)
class _InFlight:
    """A step sent to the worker (or, with nothing to compute, not sent)."""

    planned: PlannedStep
    result: asyncio.Future[StepResult] | None
    start_time: float  # unix seconds
    scheduling_s: float
    after_idle: bool  # planned after the replica waited for work: no worker wait to count


@dataclass(slots=True)
class Outputs:
    """Where every replica's iterations go: the same for all of them."""

    hub: SessionHub
    store: RedisStore | None
    stats: StatsRing
    clock: Callable[[], float]
    metrics: SchedulerMetrics | None = None
    releases: ReleaseChain = field(default_factory=ReleaseChain)


class Replica:
    def __init__(
        self,
        index: int,
        core: SchedulerCore,
        outputs: Outputs,
        on_worker_lost: Callable[[WorkerLink, str], None],
    ):
        self.index = index
        self.on_worker_lost = on_worker_lost
        self.core = core
        self.out = outputs
        self.worker: WorkerLink | None = None
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.accepted: list[Request] = []  # to persist with the next iteration
        self.ended: list[Request] = []  # ended without a token (aborts)
        self.step_id = 0  # the id of the next plan
        self._in_flight: _InFlight | None = None  # sent, result not applied yet
        self._idle = True  # the last turn found nothing to do
        self._releasing: asyncio.Task[None] | None = None  # the last iteration's release

    @property
    def has_worker(self) -> bool:
        return self.worker is not None and not self.worker.closed

    def outstanding_tokens(self) -> int:
        """Work left: prompt tokens to compute plus tokens still to generate."""
        return sum(
            max(r.num_prefill_tokens - r.num_computed_tokens, 0)
            + r.sampling.max_tokens
            - len(r.output_token_ids)
            for r in self.core.requests.values()
        )

    def attach(self, link: WorkerLink) -> None:
        self.core.attach_worker(link.geometry)
        self.worker = link
        self._in_flight = None
        self._idle = True
        self.wake.set()

    def detach(self) -> list[Request]:
        """The worker is gone: its requests wait to be recomputed (here or elsewhere)."""
        self.worker = None
        self._in_flight = None  # its result is WorkerLost: the link is closed
        self.core.detach_worker()
        return list(self.core.requests.values())

    def take_all(self) -> tuple[list[Request], list[Request], list[Request]]:
        """Hands over every request (to another replica): (in flight, accepted, ended)."""
        requests = list(self.core.requests.values())
        self.core.requests.clear()
        self.core.state.waiting.clear()
        accepted, self.accepted = self.accepted, []
        ended, self.ended = self.ended, []
        return requests, accepted, ended

    async def run(self) -> None:
        while True:
            worker = self.worker
            busy = self.core.has_work or self.accepted or self.ended or self._in_flight
            if worker is None or not busy:
                if self._releasing is not None:  # idle: finish the last release first
                    await self._released()
                    continue
                self.wake.clear()
                self._idle = True
                await self.wake.wait()
                continue
            try:
                await self._iterate(worker)
            except WorkerLost as exc:
                self.on_worker_lost(worker, str(exc))

    async def _released(self) -> None:
        """Waits for the last iteration's release (raising what it raised)."""
        releasing, self._releasing = self._releasing, None
        if releasing is not None:
            await releasing

    async def _iterate(self, worker: WorkerLink) -> None:
        """One turn: plans step n+1 and sends it, then waits for step n's result and
        applies it. The worker finds its next plan waiting when it ends a step, so the
        control plane (planning, gRPC, applying, Redis) runs while it computes, not
        between its steps. The release of step n (Redis, then the tokens to the
        gateways) runs during the next turn; tokens still leave only once they are in
        Redis, and at most one iteration per replica waits for its release."""
        t_start = time.perf_counter()
        start_time = self.out.clock()
        planned = self.core.plan(self.step_id, start_time)
        self.step_id += 1
        scheduling_s = time.perf_counter() - t_start
        sent = None
        if planned.plan.chunks or planned.plan.freed_request_ids:
            sent = worker.send(planned.plan)
        current = _InFlight(planned, sent, start_time, scheduling_s, self._idle)
        self._idle = False
        previous, self._in_flight = self._in_flight, current
        if previous is not None:
            await self._complete(previous)
        if not planned.plan.chunks and self._in_flight is current:
            self._in_flight = None
            await self._complete(current)  # frees, or nothing
            if previous is None:  # nothing to compute, nothing computing: wait for a change
                self.wake.clear()
                self._idle = True
                if not (self.accepted or self.ended):
                    await _wait(self.wake, timeout=0.05)

    async def _complete(self, step: _InFlight) -> None:
        """Waits for a step's result, applies it and queues its release."""
        planned = step.planned
        result = StepResult(planned.plan.step_id) if step.result is None else await step.result
        t_result = time.perf_counter()
        updates = self.core.apply(result, self.out.clock())
        accepted, self.accepted = self.accepted, []
        ended, self.ended = self.ended, []
        if planned.plan.chunks:
            self.core.observe(planned, result.execution_ms)
        await self._released()  # one release in flight per replica
        timing = _Timing(
            start_time=step.start_time,
            scheduling_s=step.scheduling_s,
            # on the replica's loop: planning, applying, waiting for the previous release
            control_s=step.scheduling_s + (time.perf_counter() - t_result),
            worker_wait_ms=0.0 if step.after_idle else result.worker_wait_ms,
        )
        if updates or accepted or ended or planned.plan.chunks:
            self._releasing = self.out.releases.add(
                functools.partial(self._release, planned, result, timing, accepted, updates, ended)
            )

    async def _release(
        self,
        planned: PlannedStep,
        result: StepResult,
        timing: _Timing,
        accepted: list[Request],
        updates: list[RequestUpdate],
        ended: list[Request],
    ) -> None:
        """Persists an iteration, then sends its tokens (in the release chain's order)."""
        t_release = time.perf_counter()
        await self._persist(accepted, updates, ended)
        persist_s = time.perf_counter() - t_release
        for update in updates:
            update.request.num_released = update.first_index + len(update.token_ids)
            if update.stop_reason is not None:
                self.out.stats.num_finished += 1
                _log_finished(update.request, update.stop_reason.name)
        for request in ended:
            self.out.stats.num_finished += 1
            _log_finished(request, "ABORTED")
        if planned.plan.chunks:
            self._record(planned, result, timing, persist_s)
        self.out.hub.dispatch(updates, ended)

    async def _persist(
        self, accepted: list[Request], updates: list[RequestUpdate], ended: list[Request]
    ) -> None:
        """Tokens are released only once they are in Redis: retry while it is down."""
        store = self.out.store
        if store is None:
            return
        backoff = 0.05
        while True:
            try:
                await store.persist_iteration(accepted, updates, ended)
                return
            except (RedisError, OSError) as exc:
                log.warning("redis write failed (%s); holding tokens, retry in %.2fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_PERSIST_BACKOFF_S)

    def _record(
        self, planned: PlannedStep, result: StepResult, timing: _Timing, persist_s: float
    ) -> None:
        if self.out.metrics is not None:
            self.out.metrics.iteration(
                planned.policy,
                planned.num_prefill_tokens,
                planned.num_decode_tokens,
                result.execution_ms / 1e3,
                timing.control_s,
                timing.worker_wait_ms / 1e3,
                [
                    r.first_scheduled_time - r.arrival_time
                    for r in planned.admitted
                    if r.first_scheduled_time is not None
                ],
            )
        self.out.stats.record(
            IterationStats(
                step_id=planned.plan.step_id,
                batch_size=len(planned.plan.chunks),
                num_prefill_tokens=planned.num_prefill_tokens,
                num_decode_tokens=planned.num_decode_tokens,
                execution_ms=result.execution_ms,
                scheduling_ms=timing.scheduling_s * 1e3,
                persist_ms=persist_s * 1e3,
                worker_wait_ms=timing.worker_wait_ms,
                policy=planned.policy,
                token_budget=planned.token_budget,
                start_time=timing.start_time,
            )
        )


def _log_finished(request: Request, reason: str) -> None:
    log.info(
        "request %s finished (%s): %d output tokens",
        request.request_id,
        reason,
        len(request.output_token_ids),
        extra={"request_id": request.request_id},
    )


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
