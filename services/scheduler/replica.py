"""One model replica: a worker, the scheduler core that plans for it, and its iterations.

Every replica has its own KV blocks and requests. The front (`front.py`) routes
requests to replicas and moves them between replicas only through the methods
below; nothing outside a replica touches its core.

The iterations overlap: each turn plans and sends step n+1, then finishes step n
(waits for its result, applies it, queues its release), so the worker finds its next
plan waiting and the control plane (planning, gRPC, applying, Redis) runs while it
computes. With a pacer (`pacing.py`, the default) step n+1 is planned shortly before
step n is due to end, so requests that arrive meanwhile join it. A worker of P
pipeline stages computes P micro-batches at once, and gets the next one ahead too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from sarathi_serve.common.step import StepResult
from sarathi_serve.scheduler.core import SchedulerCore
from sarathi_serve.scheduler.iteration import Handover, Occupancy
from sarathi_serve.scheduler.liveness import StepDeadline
from sarathi_serve.scheduler.pacing import PlanPacer
from sarathi_serve.scheduler.policies import Policy
from sarathi_serve.scheduler.releasing import Iteration, ReleaseQueue, Releaser, Timing
from sarathi_serve.scheduler.request import Request
from sarathi_serve.scheduler.stats import StageTimes
from sarathi_serve.scheduler.workers import InFlight, WorkerLink, WorkerLost

log = logging.getLogger(__name__)

_IDLE_POLL_S = 0.05  # work that cannot be planned yet (no KV blocks): look again after this


class Replica:
    def __init__(
        self,
        index: int,
        core: SchedulerCore,
        releaser: Releaser,
        on_worker_lost: Callable[[WorkerLink, str], None],
        clock: Callable[[], float] = time.time,
        pacer: PlanPacer | None = None,
        deadline: StepDeadline | None = None,
    ):
        self.index = index
        self.core = core
        self.worker: WorkerLink | None = None
        self.step_id = 0  # the id of the next plan
        self._on_worker_lost = on_worker_lost
        self._clock = clock
        self._releases = ReleaseQueue(releaser)
        self._wake = asyncio.Event()
        self._accepted: list[Request] = []  # to persist with the next iteration
        self._ended: list[Request] = []  # ended without a token (aborts)
        self.pacer = pacer
        self.deadline = deadline  # None: a worker is never taken for hung
        self._last_result_at = 0.0  # perf_counter seconds
        self.stage_times = StageTimes()  # a pipelined worker's, over every micro-batch

    # ---- views ----------------------------------------------------------------

    @property
    def has_worker(self) -> bool:
        return self.worker is not None and not self.worker.closed

    @property
    def worker_id(self) -> str:
        return self.worker.worker_id if self.worker is not None and self.has_worker else ""

    @property
    def occupancy(self) -> Occupancy:
        return self.core.occupancy

    @property
    def num_requests(self) -> int:
        return len(self.core.requests)

    @property
    def policy(self) -> Policy:
        return self.core.policy

    def set_policy(self, policy: Policy) -> None:
        """From the next plan on: a step in flight was planned whole by the old one."""
        self.core.policy = policy

    def holds(self, request_id: str) -> bool:
        return request_id in self.core.requests

    def outstanding_tokens(self) -> int:
        return self.core.outstanding_tokens

    def cached_prefix_tokens(self, request: Request) -> int:
        return self.core.cached_prefix_tokens(request)

    # ---- requests ---------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Admission checks, then queued; persisted with the next iteration."""
        self.core.add(request)
        self._accepted.append(request)
        self._wake.set()

    def abort(self, request_id: str) -> bool:
        request = self.core.abort(request_id, self._clock())
        if request is None:
            return False
        self._ended.append(request)
        self._wake.set()
        return True

    def abort_session(self, session_id: str) -> None:
        for request_id in self.core.request_ids_of_session(session_id):
            self.abort(request_id)

    def hold_session(self, session_id: str) -> None:
        self.core.hold_session(session_id)

    def reclaim(self, request_id: str, session_id: str) -> list[int] | None:
        return self.core.reclaim(request_id, session_id)

    def receive(self, request: Request, persisted: bool = True) -> None:
        """Queues a request that holds nothing (recovered, or handed over)."""
        self.core.restore(request)
        if not persisted:
            self._accepted.append(request)
        self._wake.set()

    def receive_ended(self, requests: list[Request]) -> None:
        self._ended.extend(requests)
        self._wake.set()

    def take_waiting(self) -> Handover:
        """Hands over the waiting requests (never scheduled, preempted or recovered)."""
        requests = self.core.take_waiting()
        taken = set(map(id, requests))
        unpersisted = [r for r in self._accepted if id(r) in taken]
        self._accepted = [r for r in self._accepted if id(r) not in taken]
        return Handover(requests, unpersisted)

    def hand_over(self) -> Handover:
        """Hands over everything (only without a worker: all its requests wait)."""
        assert not self.has_worker
        handover = self.take_waiting()
        assert not self.core.requests
        handover.unpersisted.extend(self._accepted)
        handover.ended, self._accepted, self._ended = self._ended, [], []
        return handover

    # ---- workers ----------------------------------------------------------------

    def attach(self, link: WorkerLink) -> None:
        self.core.attach_worker(link.geometry)
        self.worker = link
        self._wake.set()

    def detach(self) -> int:
        """The worker is gone: its requests wait to be recomputed (here or elsewhere).
        A step in flight is dropped: its result is WorkerLost, the link is closed."""
        self.worker = None
        self.core.detach_worker()
        return len(self.core.requests)

    # ---- iterations ---------------------------------------------------------------

    async def run(self) -> None:
        in_flight: deque[InFlight] = deque()  # oldest first
        while True:
            if in_flight and in_flight[0].worker is not self.worker:
                in_flight.clear()  # planned for a worker that is gone: recomputed
            worker = self.worker
            if worker is None or not (in_flight or self._has_work):
                await self._idle()
                continue
            try:
                await self._turn(worker, in_flight)
            except WorkerLost as exc:
                in_flight.clear()
                if exc.failed_step is not None:  # bounded: see SchedulerCore.charge_failed_step
                    self._ended.extend(self.core.charge_failed_step(exc.failed_step, self._clock()))
                self._on_worker_lost(worker, str(exc))

    async def _turn(self, worker: WorkerLink, in_flight: deque[InFlight]) -> None:
        """Plans and sends a step, then finishes the oldest once the worker has its depth
        in flight: the next plan waits for it. (Depth P: P pipeline stages, P micro-batches
        at once; a decode goes only into a step P after the one sampling its token.)"""
        depth = worker.geometry.pipeline_depth
        full = len(in_flight) >= depth
        if full and depth == 1 and self.pacer is not None:
            await self._until_due(self.pacer, in_flight[0])
        step = self._send(worker, after_idle=not in_flight)
        in_flight.append(step)  # results come in the order of the plans
        computed = await self._finish_oldest(in_flight) if full else False
        if step.planned.plan.chunks:
            return
        while in_flight and not computed:  # nothing to plan until a step that computes ends
            computed = await self._finish_oldest(in_flight)
        if not computed:  # nothing computed, nothing computing: wait for a change
            await self._pause(_IDLE_POLL_S)

    async def _finish_oldest(self, in_flight: deque[InFlight]) -> bool:
        """Finishes the oldest step; whether it computed anything."""
        oldest = in_flight.popleft()
        await self._finish(oldest)
        return bool(oldest.planned.plan.chunks)

    async def _until_due(self, pacer: PlanPacer, computing: InFlight) -> None:
        """Waits until the pacer's time to plan the next step, or until `computing` ends."""
        started_at = max(computing.sent_at, self._last_result_at)
        delay_s = pacer.due(started_at, computing.planned) - time.perf_counter()
        if delay_s > 0 and computing.result is not None and not computing.result.done():
            await asyncio.wait([computing.result], timeout=delay_s)

    def _send(self, worker: WorkerLink, after_idle: bool) -> InFlight:
        t_start = time.perf_counter()
        start_time, served = self._clock(), bool(self.core.state.running)
        planned = self.core.plan(self.step_id, start_time)
        self.step_id += 1
        scheduling_s = time.perf_counter() - t_start
        plan = planned.plan
        result = worker.send(plan) if plan.chunks or plan.freed_request_ids else None
        sent_at = time.perf_counter()
        return InFlight(
            worker, planned, result, start_time, scheduling_s, after_idle, sent_at, served
        )

    async def _finish(self, step: InFlight) -> None:
        """Waits for a step's result, applies it and queues its release."""
        planned = step.planned
        if step.result is None:
            result = StepResult(planned.plan.step_id)
        else:
            result = await self._result(step, step.result)
        previous, self._last_result_at = self._last_result_at, time.perf_counter()
        result = self.stage_times.observe(result, step.served)
        updates = self.core.apply(result, self._clock())
        accepted, ended, self._accepted, self._ended = self._accepted, self._ended, [], []
        if planned.plan.chunks:
            interval_ms = None if step.after_idle else (self._last_result_at - previous) * 1e3
            self.core.observe(planned, result.execution_ms, interval_ms)
            if self.deadline is not None:
                self.deadline.observe(planned, result.execution_ms)
            if self.pacer is not None:
                wait_ms = 0.0 if step.after_idle else result.worker_wait_ms
                self.pacer.observe(planned, result.execution_ms, wait_ms)
        await self._releases.drain()  # one release in flight per replica
        timing = Timing(
            start_time=step.start_time,
            scheduling_s=step.scheduling_s,
            # on the replica's loop: planning, applying, waiting for the previous release
            control_s=step.scheduling_s + (time.perf_counter() - self._last_result_at),
            worker_wait_ms=0.0 if step.after_idle else result.worker_wait_ms,
        )
        self._releases.put(Iteration(planned, result, timing, accepted, updates, ended, self.index))

    async def _result(self, step: InFlight, result: asyncio.Future[StepResult]) -> StepResult:
        """The step's result; WorkerLost once it runs past its allowance (`liveness.py`)."""
        if self.deadline is None or not step.planned.plan.chunks:
            return await result
        started_at = max(step.sent_at, self._last_result_at)
        allowance_s = self.deadline.allowance_s(step.planned)
        timeout_s = started_at + allowance_s - time.perf_counter()
        done, _ = await asyncio.wait([result], timeout=max(timeout_s, 0.0))
        if not done:
            raise WorkerLost(
                f"worker {step.worker.worker_id} hangs: step {step.planned.plan.step_id} "
                f"has run {time.perf_counter() - started_at:.1f}s (allowed {allowance_s:.1f}s)"
            )
        return result.result()

    @property
    def _has_work(self) -> bool:
        return bool(self.core.has_work or self._accepted or self._ended)

    async def _idle(self) -> None:
        """Nothing to plan: finish the last release, then wait for a change."""
        if self._releases.pending:
            await self._releases.drain()
            return
        self._wake.clear()
        await self._wake.wait()

    async def _pause(self, timeout_s: float) -> None:
        self._wake.clear()
        if not (self._accepted or self._ended):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout_s)
