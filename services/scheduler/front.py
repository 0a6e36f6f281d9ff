"""The scheduler's front: the one object its gRPC servicer talks to.

It owns the replicas (one per attached worker, `replica.py`) and decides where
requests go: a new request to the replica with the least outstanding work; those of
a replica whose worker died to replicas that have one (recomputed there), or they
wait for a worker. It also owns the gateways' sessions (`sessions.py`), a previous
leader's requests and policy swaps, and reaches replicas only through their narrow
API (submit, abort, hand over, receive, attach and detach a worker).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable

from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.scheduler.core import SchedulerCore
from sarathi_serve.scheduler.iteration import Handover, Occupancy
from sarathi_serve.scheduler.liveness import StepDeadline
from sarathi_serve.scheduler.metrics import SchedulerMetrics
from sarathi_serve.scheduler.pacing import PlanPacer
from sarathi_serve.scheduler.policies import Policy, make_policy
from sarathi_serve.scheduler.policies.sarathi import SarathiPolicy
from sarathi_serve.scheduler.releasing import Releaser
from sarathi_serve.scheduler.replica import Replica
from sarathi_serve.scheduler.request import Request
from sarathi_serve.scheduler.sessions import Sessions
from sarathi_serve.scheduler.stats import StatsRing
from sarathi_serve.scheduler.store import FinishedRequest, RedisStore, StoredRequest
from sarathi_serve.scheduler.workers import WorkerLink

log = logging.getLogger(__name__)

UNCACHED_PROMPT_WEIGHT = 1.0  # a prompt token to compute counts as much as outstanding work
ROUTING_SCORE = (
    f"outstanding tokens (prompt tokens to compute + tokens to generate) "
    f"+ {UNCACHED_PROMPT_WEIGHT:g} x the request's prompt tokens not cached on the replica"
)


class SchedulerFront:
    def __init__(
        self,
        make_core: Callable[[], SchedulerCore],
        store: RedisStore | None,
        stats: StatsRing,
        *,
        session_grace_s: float = 30.0,
        metrics: SchedulerMetrics | None = None,
        clock: Callable[[], float] = time.time,
        pace_plans: bool = True,
        worker_stall_s: float = 0.0,
    ):
        self.make_core = make_core
        self.pace_plans = pace_plans
        self.worker_stall_s = worker_stall_s  # 0: a worker is never taken for hung
        self.store = store
        self.stats = stats
        self.clock = clock
        self.sessions = Sessions(self, session_grace_s)
        self._releaser = Releaser(self.sessions, store, stats, metrics)
        self.replicas: list[Replica] = []
        self._replicas_changed = asyncio.Event()
        self._add_replica()  # requests have a home before any worker attaches

    # ---- views --------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        return self.replicas[0].policy

    @property
    def num_workers(self) -> int:
        return sum(r.has_worker for r in self.replicas)

    @property
    def occupancy(self) -> Occupancy:
        return sum((r.occupancy for r in self.replicas), Occupancy())

    # ---- requests -------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Routes a new request; raises InvalidArgument or ResourceExhausted."""
        if self._holder(request.request_id) is not None:
            raise InvalidArgument(f"request_id {request.request_id!r} is already in flight")
        if request.sampling.seed is None and not request.sampling.is_greedy:
            # A seed of our own, kept in Redis: a recomputed request draws the same tokens.
            seed = random.getrandbits(62)
            request.sampling = dataclasses.replace(request.sampling, seed=seed)
        replica = self._route(request)
        replica.submit(request)
        log.info(
            "request %s accepted: %d prompt tokens, replica %d",
            request.request_id,
            len(request.prompt_token_ids),
            replica.index,
            extra={"request_id": request.request_id},
        )

    def abort(self, request_id: str) -> None:
        holder = self._holder(request_id)
        if holder is not None:
            holder.abort(request_id)

    def abort_session(self, gateway_id: str) -> None:
        for replica in self.replicas:
            replica.abort_session(gateway_id)

    def hold_session(self, gateway_id: str) -> None:
        for replica in self.replicas:
            replica.hold_session(gateway_id)

    def reclaim(self, request_id: str, gateway_id: str) -> list[int] | None:
        holder = self._holder(request_id)
        return None if holder is None else holder.reclaim(request_id, gateway_id)

    async def load_finished(self, request_id: str) -> FinishedRequest | None:
        return None if self.store is None else await self.store.load_finished(request_id)

    def recover(self, stored: list[StoredRequest]) -> None:
        """Takes over the in-flight requests a previous leader left in Redis; they
        are recomputed (prompt + tokens so far) and held until their gateway resumes."""
        home = self.replicas[0]
        for item in stored:
            home.receive(item.to_request(awaiting_resume=True))
        for gateway_id in {item.session_id for item in stored}:
            self.sessions.expire_later(gateway_id)
        if stored:
            log.info("recovered %d in-flight requests from Redis", len(stored))

    def set_policy(self, make_policy: Callable[[], Policy]) -> int:
        """Takes effect at each replica's next plan. Returns the first step of the new
        policy (of replica 0)."""
        old = self.policy
        for replica in self.replicas:
            replica.set_policy(make_policy())
        new = self.policy
        first_step = self.replicas[0].step_id
        log.info(
            "policy %s/%d -> %s/%d from step %d",
            *(old.name, old.token_budget, new.name, new.token_budget, first_step),
        )
        return first_step

    def swap_policy(
        self,
        name: str,
        *,
        token_budget: int | None = None,
        max_num_seqs: int | None = None,
        target_tbt_ms: float | None = None,
        target_tbt_factor: float | None = None,
    ) -> tuple[Policy, int]:
        """Swaps to policy `name`; what is not given stays as the current policy has it
        (a sarathi policy keeps its options, a target it measured too). A factor given
        with no target measures the target again. Returns the new policy and its first
        step; raises ValueError (before anything changes) for a bad policy or parameter."""
        current = self.policy
        keep = isinstance(current, SarathiPolicy) and name == "sarathi"
        options = current.options() if keep else {}
        if target_tbt_factor is not None:
            options["target_tbt_factor"] = target_tbt_factor
            options["target_tbt_ms"] = 0.0  # measured again, unless given below
        if target_tbt_ms is not None:
            options["target_tbt_ms"] = target_tbt_ms
        budget = current.token_budget if token_budget is None else token_budget
        seqs = current.max_num_seqs if max_num_seqs is None else max_num_seqs

        def make() -> Policy:
            return make_policy(name, token_budget=budget, max_num_seqs=seqs, **options)

        policy = make()
        return policy, self.set_policy(make)

    def _holder(self, request_id: str) -> Replica | None:
        return next((r for r in self.replicas if r.holds(request_id)), None)

    def _route(self, request: Request) -> Replica:
        """The replica with the lowest ROUTING_SCORE for a new request: the work it would
        have with the request, counting the prompt tokens it holds cached as done. A
        replica holding a long prefix wins unless the others have less work by more than
        the prefix; with nothing cached anywhere it is the least loaded replica."""
        candidates = [r for r in self.replicas if r.has_worker] or self.replicas
        if len(candidates) == 1:
            return candidates[0]
        num_prompt = len(request.prompt_token_ids)

        def score(replica: Replica) -> float:
            uncached = num_prompt - replica.cached_prefix_tokens(request)
            return replica.outstanding_tokens() + UNCACHED_PROMPT_WEIGHT * uncached

        return min(candidates, key=lambda r: (score(r), r.index))

    def _least_loaded(self) -> Replica:
        candidates = [r for r in self.replicas if r.has_worker] or self.replicas
        return min(candidates, key=lambda r: (r.outstanding_tokens(), r.index))

    # ---- workers ----------------------------------------------------------------

    def attach(self, link: WorkerLink) -> None:
        """A worker takes a replica without one (the one holding most requests), or a new one."""
        free = [r for r in self.replicas if not r.has_worker]
        if free:
            replica = max(free, key=lambda r: (r.num_requests, -r.index))
        else:
            replica = self._add_replica()
        replica.attach(link)
        log.info(
            "worker %s attached as replica %d: %s", link.worker_id, replica.index, link.geometry
        )
        self._rebalance()
        self.sessions.workers_changed(self.num_workers)

    def close(self) -> None:
        """Ends every peer's stream (no longer the leader): each sees it end, dials on."""
        self.sessions.close_all()
        for worker in filter(None, (r.worker for r in self.replicas)):
            worker.close("the scheduler stops leading")

    def detach(self, link: WorkerLink, reason: str) -> None:
        link.close(reason)
        replica = next((r for r in self.replicas if r.worker is link), None)
        if replica is None:
            return
        num_requests = replica.detach()
        log.warning(
            "worker %s (replica %d) detached (%s); %d requests wait for recompute",
            *(link.worker_id, replica.index, reason, num_requests),
        )
        self._rebalance()
        self.sessions.workers_changed(self.num_workers)

    def _rebalance(self) -> None:
        """Moves the requests of replicas without a worker to replicas with one, then
        deals the waiting requests out again over all of them (a worker that attaches
        after a failover, or after the others, takes its share of the queue)."""
        if not any(r.has_worker for r in self.replicas):
            return
        for orphan in [r for r in self.replicas if not r.has_worker and r.num_requests]:
            handover = orphan.hand_over()
            self._place(handover)
            log.info("moved %d requests off replica %d", len(handover.requests), orphan.index)
        live = [r for r in self.replicas if r.has_worker]
        if len(live) < 2:
            return
        waiting = Handover()
        for replica in live:
            taken = replica.take_waiting()
            waiting.requests.extend(taken.requests)
            waiting.unpersisted.extend(taken.unpersisted)
        waiting.requests.sort(key=lambda request: request.arrival_time)
        self._place(waiting)

    def _place(self, handover: Handover) -> None:
        """Queues each request on the least loaded replica with a worker; one not in
        Redis yet is persisted by the replica that takes it."""
        unpersisted = set(map(id, handover.unpersisted))
        for request in handover.requests:
            self._least_loaded().receive(request, persisted=id(request) not in unpersisted)
        if handover.ended:
            self._least_loaded().receive_ended(handover.ended)

    def _add_replica(self) -> Replica:
        pacer = PlanPacer() if self.pace_plans else None  # one step-time model: the pacer's
        stall_s = self.worker_stall_s
        deadline = StepDeadline(stall_s, pacer and pacer.model) if stall_s > 0 else None
        index, core = len(self.replicas), self.make_core()
        replica = Replica(index, core, self._releaser, self.detach, self.clock, pacer, deadline)
        if self.replicas:
            replica.set_policy(self.policy)
        self.replicas.append(replica)
        self._replicas_changed.set()
        return replica

    # ---- the replicas' iterations -------------------------------------------------

    async def run(self) -> None:
        """Runs every replica's iterations (replicas join as workers attach); raises
        what a replica raised (a fenced-off leader's release)."""
        tasks: dict[Replica, asyncio.Task[None]] = {}
        try:
            while True:
                for replica in self.replicas:
                    if replica not in tasks:
                        tasks[replica] = asyncio.ensure_future(replica.run())
                self._replicas_changed.clear()
                changed = asyncio.ensure_future(self._replicas_changed.wait())
                done, _ = await asyncio.wait(
                    [changed, *tasks.values()], return_when=asyncio.FIRST_COMPLETED
                )
                changed.cancel()
                for task in done - {changed}:
                    task.result()  # a replica's iterations never end: raise its error
        finally:
            for task in tasks.values():
                task.cancel()
