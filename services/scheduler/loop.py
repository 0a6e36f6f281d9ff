"""The scheduler's iteration loops: one per model replica (worker), fed from one front.

New requests go to the replica with the least outstanding work; a replica
whose worker died hands its requests to one that has a worker (they are
recomputed there), or keeps them until a worker attaches again. Sessions,
recovery after a failover and policy swaps are handled here, for all replicas.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator

from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.scheduler.core import Occupancy, SchedulerCore
from sarathi_serve.scheduler.metrics import SchedulerMetrics
from sarathi_serve.scheduler.policies import Policy
from sarathi_serve.scheduler.replica import Outputs, Replica
from sarathi_serve.scheduler.request import Request
from sarathi_serve.scheduler.sessions import SessionHub
from sarathi_serve.scheduler.stats import StatsRing
from sarathi_serve.scheduler.store import RedisStore, StoredRequest
from sarathi_serve.scheduler.workers import WorkerLink

log = logging.getLogger(__name__)


class IterationLoop:
    def __init__(
        self,
        make_core: Callable[[], SchedulerCore],
        hub: SessionHub,
        store: RedisStore | None,
        stats: StatsRing,
        clock: Callable[[], float] = time.time,
        session_grace_s: float = 30.0,
        metrics: SchedulerMetrics | None = None,
    ):
        self.make_core = make_core
        self.hub = hub
        self.store = store
        self.stats = stats
        self.clock = clock
        self.session_grace_s = session_grace_s
        self.metrics = metrics
        self._outputs = Outputs(hub, store, stats, clock, metrics)
        self.replicas: list[Replica] = []
        self._replicas_changed = asyncio.Event()
        self._expiries: dict[str, asyncio.TimerHandle] = {}
        self._add_replica()  # requests have a home before any worker attaches

    # ---- views ------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        return self.replicas[0].core.policy

    @property
    def num_workers(self) -> int:
        return sum(r.has_worker for r in self.replicas)

    @property
    def occupancy(self) -> Occupancy:
        return sum((c.occupancy for c in self.cores()), Occupancy())

    def cores(self) -> Iterator[SchedulerCore]:
        return (r.core for r in self.replicas)

    def find(self, request_id: str) -> Request | None:
        for core in self.cores():
            request = core.requests.get(request_id)
            if request is not None:
                return request
        return None

    # ---- inputs (called from the gRPC handlers, same event loop) ----------

    def submit(self, request: Request) -> None:
        if self.find(request.request_id) is not None:
            raise InvalidArgument(f"request_id {request.request_id!r} is already in flight")
        replica = self._least_loaded()
        replica.core.add(request)
        replica.accepted.append(request)
        replica.wake.set()
        log.info(
            "request %s accepted: %d prompt tokens, replica %d",
            request.request_id,
            len(request.prompt_token_ids),
            replica.index,
            extra={"request_id": request.request_id},
        )

    def abort(self, request_id: str) -> None:
        for replica in self.replicas:
            request = replica.core.abort(request_id, self.clock())
            if request is not None:
                replica.ended.append(request)
                replica.wake.set()
                return

    def abort_session(self, session_id: str) -> None:
        for core in list(self.cores()):
            for request in [r for r in core.requests.values() if r.session_id == session_id]:
                self.abort(request.request_id)

    def _least_loaded(self) -> Replica:
        candidates = [r for r in self.replicas if r.has_worker] or self.replicas
        return min(candidates, key=lambda r: (r.outstanding_tokens(), r.index))

    # ---- sessions that come and go ------------------------------------------

    def recover(self, stored: list[StoredRequest]) -> None:
        """Takes over the in-flight requests a previous leader left in Redis; they
        are recomputed (prompt + tokens so far) and held until their gateway resumes."""
        home = self.replicas[0]
        for item in stored:
            home.core.restore(
                Request(
                    request_id=item.request_id,
                    prompt_token_ids=item.prompt_token_ids,
                    sampling=item.sampling,
                    session_id=item.session_id,
                    arrival_time=item.arrival_time,
                    output_token_ids=list(item.output_token_ids),
                    awaiting_resume=True,
                    num_released=len(item.output_token_ids),
                )
            )
        for gateway_id in {item.session_id for item in stored}:
            self.expire_session_later(gateway_id)
        if stored:
            log.info("recovered %d in-flight requests from Redis", len(stored))
            home.wake.set()

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

    def set_policy(self, make_policy: Callable[[], Policy]) -> int:
        """Takes effect at each replica's next plan: an iteration in flight was planned
        whole by the old policy. Returns the first step of the new one (of replica 0)."""
        old = self.policy
        for replica in self.replicas:
            replica.core.policy = make_policy()
        new = self.policy
        first_step = self.replicas[0].step_id
        log.info(
            "policy %s/%d -> %s/%d from step %d",
            old.name,
            old.token_budget,
            new.name,
            new.token_budget,
            first_step,
        )
        return first_step

    # ---- workers -------------------------------------------------------------

    def attach(self, link: WorkerLink) -> None:
        """A worker takes a replica without one (the one holding most requests), or a new one."""
        free = [r for r in self.replicas if not r.has_worker]
        if free:
            replica = max(free, key=lambda r: (len(r.core.requests), -r.index))
        else:
            replica = self._add_replica()
        replica.attach(link)
        log.info(
            "worker %s attached as replica %d: %s", link.worker_id, replica.index, link.geometry
        )
        self._rebalance()

    def detach(self, link: WorkerLink, reason: str) -> None:
        link.close(reason)
        replica = next((r for r in self.replicas if r.worker is link), None)
        if replica is None:
            return
        requests = replica.detach()
        log.warning(
            "worker %s (replica %d) detached (%s); %d requests wait for recompute",
            link.worker_id,
            replica.index,
            reason,
            len(requests),
        )
        self._rebalance()

    def _rebalance(self) -> None:
        """Moves the requests of replicas without a worker to replicas with one, then
        deals the waiting requests out again over all of them (a worker that attaches
        after a failover, or after the others, takes its share of the queue)."""
        if not any(r.has_worker for r in self.replicas):
            return
        for orphan in [r for r in self.replicas if not r.has_worker and r.core.requests]:
            requests, accepted, ended = orphan.take_all()
            for request in requests:
                self._place(request, orphan, accepted)
            if ended:
                self._least_loaded().ended.extend(ended)
            log.info("moved %d requests off replica %d", len(requests), orphan.index)
        live = [r for r in self.replicas if r.has_worker]
        if len(live) < 2:
            return
        waiting = [
            (request, replica) for replica in live for request in replica.core.take_waiting()
        ]
        for request, source in sorted(waiting, key=lambda item: item[0].arrival_time):
            self._place(request, source, source.accepted)

    def _place(self, request: Request, source: Replica, accepted: list[Request]) -> None:
        """Queues a request that holds nothing on the least loaded replica with a worker."""
        target = self._least_loaded()
        target.core.restore(request)
        if request in accepted and target is not source:  # not persisted yet: goes along
            accepted.remove(request)
            target.accepted.append(request)
        target.wake.set()

    def _add_replica(self) -> Replica:
        core = self.make_core()
        if self.replicas:
            core.policy = self.policy
        replica = Replica(len(self.replicas), core, self._outputs, self._worker_lost)
        self.replicas.append(replica)
        self._replicas_changed.set()
        return replica

    def _worker_lost(self, link: WorkerLink, reason: str) -> None:
        self.detach(link, reason)

    # ---- the loops -------------------------------------------------------------

    async def run(self) -> None:
        """Runs every replica's iteration loop (replicas join as workers attach)."""
        try:
            while True:
                for replica in self.replicas:
                    if replica.task is None:
                        replica.task = asyncio.ensure_future(replica.run())
                self._replicas_changed.clear()
                changed = asyncio.ensure_future(self._replicas_changed.wait())
                tasks = [r.task for r in self.replicas if r.task is not None]
                done, _ = await asyncio.wait([changed, *tasks], return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                for task in done:
                    if task is not changed:
                        task.result()  # a replica loop never returns: raise its error
        finally:
            for replica in self.replicas:
                if replica.task is not None:
                    replica.task.cancel()
