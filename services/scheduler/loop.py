"""The iteration loop: schedule, run on the worker, apply, persist, stream out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from sarathi_serve.common.errors import ServiceError
from sarathi_serve.common.step import StepResult
from sarathi_serve.scheduler.core import PlannedStep, RequestUpdate, SchedulerCore
from sarathi_serve.scheduler.metrics import SchedulerMetrics
from sarathi_serve.scheduler.policies import Policy
from sarathi_serve.scheduler.request import Request
from sarathi_serve.scheduler.sessions import SessionHub
from sarathi_serve.scheduler.stats import IterationStats, StatsRing
from sarathi_serve.scheduler.store import RedisStore, StoredRequest
from sarathi_serve.scheduler.workers import WorkerLink, WorkerLost

log = logging.getLogger(__name__)

_MAX_PERSIST_BACKOFF_S = 2.0


class IterationLoop:
    def __init__(
        self,
        core: SchedulerCore,
        hub: SessionHub,
        store: RedisStore | None,
        stats: StatsRing,
        clock: Callable[[], float] = time.time,
        session_grace_s: float = 30.0,
        metrics: SchedulerMetrics | None = None,
    ):
        self.core = core
        self.hub = hub
        self.store = store
        self.stats = stats
        self.clock = clock
        self.worker: WorkerLink | None = None
        self._wake = asyncio.Event()
        self._accepted: list[Request] = []  # to persist with the next iteration
        self._ended: list[Request] = []  # ended without a token (aborts)
        self._step_id = 0  # the id of the next plan
        self._last_result_at: float | None = None
        self.session_grace_s = session_grace_s
        self.metrics = metrics
        self._expiries: dict[str, asyncio.TimerHandle] = {}

    # ---- inputs (called from the gRPC handlers, same event loop) ----------

    def submit(self, request: Request) -> None:
        self.core.add(request)
        self._accepted.append(request)
        self._wake.set()

    def abort(self, request_id: str) -> None:
        request = self.core.abort(request_id, self.clock())
        if request is not None:
            self._ended.append(request)
            self._wake.set()

    def abort_session(self, session_id: str) -> None:
        for request in [r for r in self.core.requests.values() if r.session_id == session_id]:
            self.abort(request.request_id)

    # ---- sessions that come and go ------------------------------------------

    def recover(self, stored: list[StoredRequest]) -> None:
        """Takes over the in-flight requests a previous leader left in Redis; they
        are recomputed (prompt + tokens so far) and held until their gateway resumes."""
        for item in stored:
            self.core.restore(
                Request(
                    request_id=item.request_id,
                    prompt_token_ids=item.prompt_token_ids,
                    sampling=item.sampling,
                    session_id=item.session_id,
                    arrival_time=item.arrival_time,
                    output_token_ids=list(item.output_token_ids),
                    awaiting_resume=True,
                )
            )
        for gateway_id in {item.session_id for item in stored}:
            self.expire_session_later(gateway_id)
        if stored:
            log.info("recovered %d in-flight requests from Redis", len(stored))
            self._wake.set()

    def expire_session_later(self, gateway_id: str) -> None:
        """Aborts the gateway's requests unless it reconnects within the grace period."""
        self.cancel_session_expiry(gateway_id)
        self._expiries[gateway_id] = asyncio.get_running_loop().call_later(
            self.session_grace_s, self._expire, gateway_id
        )

    async def load_finished(self, request_id: str) -> tuple[list[int], str] | None:
        return None if self.store is None else await self.store.load_finished(request_id)

    def cancel_session_expiry(self, gateway_id: str) -> None:
        handle = self._expiries.pop(gateway_id, None)
        if handle is not None:
            handle.cancel()

    def _expire(self, gateway_id: str) -> None:
        self._expiries.pop(gateway_id, None)
        if not self.hub.is_open(gateway_id):
            log.warning("gateway %s did not come back: aborting its requests", gateway_id)
            self.abort_session(gateway_id)

    def set_policy(self, policy: Policy) -> int:
        """Takes effect at the next plan: the iteration in flight (if any) was
        planned whole by the old policy. Returns the first step of the new one."""
        old = self.core.policy
        self.core.policy = policy
        log.info(
            "policy %s/%d -> %s/%d from step %d",
            old.name,
            old.token_budget,
            policy.name,
            policy.token_budget,
            self._step_id,
        )
        return self._step_id

    def attach(self, link: WorkerLink) -> None:
        if self.worker is not None and not self.worker.closed:
            raise ServiceError(f"worker {self.worker.worker_id} is already attached")
        self.core.attach_worker(link.geometry)
        self.worker = link
        self._wake.set()
        log.info("worker %s attached: %s", link.worker_id, link.geometry)

    def detach(self, link: WorkerLink, reason: str) -> None:
        link.close(reason)
        worker_id = link.worker_id
        if self.worker is link:
            self.worker = None
            self.core.detach_worker()
            log.warning("worker %s detached (%s); requests wait for recompute", worker_id, reason)

    # ---- the loop ----------------------------------------------------------

    async def run(self) -> None:
        while True:
            worker = self.worker
            if worker is None or not (self.core.has_work or self._accepted or self._ended):
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._iterate(worker)
            except WorkerLost as exc:
                self.detach(worker, str(exc))

    async def _iterate(self, worker: WorkerLink) -> None:
        t_start = time.perf_counter()
        start_time = self.clock()
        planned = self.core.plan(self._step_id, start_time)
        self._step_id += 1
        t_planned = time.perf_counter()
        if planned.plan.chunks or planned.plan.freed_request_ids:
            result = await worker.step(planned.plan)
        else:
            result = StepResult(planned.plan.step_id)
        t_result = time.perf_counter()
        updates = self.core.apply(result, self.clock())
        accepted, self._accepted = self._accepted, []
        ended, self._ended = self._ended, []
        await self._persist(accepted, updates, ended)
        t_persisted = time.perf_counter()
        self.hub.dispatch(updates, ended)
        self.stats.num_finished += sum(1 for u in updates if u.stop_reason) + len(ended)
        if planned.plan.chunks:
            self._record(planned, result, start_time, t_start, t_planned, t_result, t_persisted)
        else:
            self._wake.clear()  # nothing schedulable now: wait for a change
            if not (self._accepted or self._ended):
                await _wait(self._wake, timeout=0.05)
        self._last_result_at = t_result

    async def _persist(
        self, accepted: list[Request], updates: list[RequestUpdate], ended: list[Request]
    ) -> None:
        """Tokens are released only once they are in Redis: retry while it is down."""
        if self.store is None:
            return
        backoff = 0.05
        while True:
            try:
                await self.store.persist_iteration(accepted, updates, ended)
                return
            except (RedisError, OSError) as exc:
                log.warning("redis write failed (%s); holding tokens, retry in %.2fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_PERSIST_BACKOFF_S)

    def _record(
        self,
        planned: PlannedStep,
        result: StepResult,
        start_time: float,
        t_start: float,
        t_planned: float,
        t_result: float,
        t_persisted: float,
    ) -> None:
        delay = 0.0 if self._last_result_at is None else (t_planned - self._last_result_at)
        if self.metrics is not None:
            self.metrics.iteration(
                planned.policy,
                planned.num_prefill_tokens,
                planned.num_decode_tokens,
                result.execution_ms / 1e3,
                (t_planned - t_start) + (t_persisted - t_result),
                [
                    r.first_scheduled_time - r.arrival_time
                    for r in planned.admitted
                    if r.first_scheduled_time is not None
                ],
            )
        self.stats.record(
            IterationStats(
                step_id=planned.plan.step_id,
                batch_size=len(planned.plan.chunks),
                num_prefill_tokens=planned.num_prefill_tokens,
                num_decode_tokens=planned.num_decode_tokens,
                execution_ms=result.execution_ms,
                scheduling_ms=(t_planned - t_start) * 1e3,
                persist_ms=(t_persisted - t_result) * 1e3,
                inter_batch_delay_ms=delay * 1e3,
                policy=planned.policy,
                token_budget=planned.token_budget,
                start_time=start_time,
            )
        )


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
