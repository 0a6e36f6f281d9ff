"""The scheduler's bookkeeping, free of I/O: requests in, plans out, results in, updates out.

A replica drives it (`replica.py`); tests feed it fake worker results, as vLLM's do.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from sarathi_serve.common.errors import ResourceExhausted, ServiceError
from sarathi_serve.common.step import (
    NewRequest,
    ScheduledChunk,
    StepPlan,
    StepResult,
    WorkerGeometry,
)
from sarathi_serve.scheduler.admission import check_request
from sarathi_serve.scheduler.block_manager import BlockManager, PrefixCacheStats
from sarathi_serve.scheduler.iteration import Occupancy, PlannedStep, RequestUpdate
from sarathi_serve.scheduler.policies import Policy
from sarathi_serve.scheduler.policies.step_model import StepShape
from sarathi_serve.scheduler.request import Request, RequestStatus, StopReason
from sarathi_serve.scheduler.state import SchedulerState
from sarathi_serve.scheduler.stopping import charge_failed_step, stop_reason
from sarathi_serve.scheduler.waiting import WaitingQueue

NEVER_FULL = 1 << 62  # a block size no request reaches


class SchedulerCore:
    def __init__(
        self,
        policy: Policy,
        *,
        max_num_waiting: int = 1024,
        watermark: float = 0.01,
        prefix_caching: bool = True,
        tenant_weights: Mapping[str, float] | None = None,
    ):
        self.policy = policy
        self.max_num_waiting = max_num_waiting
        self.watermark = watermark
        self.prefix_caching = prefix_caching
        self.prefix_stats = PrefixCacheStats()  # over every worker this replica had
        self.state = SchedulerState(WaitingQueue(tenant_weights))
        self.requests: dict[str, Request] = {}
        self.geometry: WorkerGeometry | None = None
        self.blocks: BlockManager | None = None
        self._freed_ids: list[str] = []  # to announce to the worker with the next plan
        self._in_flight: deque[PlannedStep] = deque()  # planned, result not applied yet

    # ---- requests --------------------------------------------------------

    def add(self, request: Request) -> None:
        """Queues a request; raises InvalidArgument or ResourceExhausted. (A request id
        already in flight is refused by the front, which sees every replica.)"""
        check_request(request, self.geometry)
        if len(self.state.waiting) >= self.max_num_waiting:
            raise ResourceExhausted(f"waiting queue is full ({self.max_num_waiting}); retry later")
        self.restore(request)

    def restore(self, request: Request) -> None:
        """Queues a request recovered from Redis (accepted before: no admission checks)."""
        self.requests[request.request_id] = request
        self.state.waiting.append(request)

    def take_waiting(self) -> list[Request]:
        """Hands over every waiting request: none holds KV blocks or a place on the worker
        (never scheduled, preempted, or recovered), so another replica can take it as is."""
        taken = list(self.state.waiting)
        self.state.waiting.clear()
        for request in taken:
            assert not request.block_ids and not request.on_worker
            del self.requests[request.request_id]
        return taken

    def reclaim(self, request_id: str, session_id: str) -> list[int] | None:
        """Hands a request to a (reconnected) gateway's session: the output tokens it
        may have had so far (released), or None when the request is not here."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        request.session_id = session_id
        request.awaiting_resume = False
        return request.output_token_ids[: request.num_released]

    def hold_session(self, session_id: str) -> None:
        """The session's requests wait for their gateway to resume them (`reclaim`)."""
        for request_id in self.request_ids_of_session(session_id):
            self.requests[request_id].awaiting_resume = True

    def request_ids_of_session(self, session_id: str) -> list[str]:
        return [r.request_id for r in self.requests.values() if r.session_id == session_id]

    def abort(self, request_id: str, now: float) -> Request | None:
        request = self.requests.get(request_id)
        if request is None:
            return None
        self._finish(request, StopReason.ABORTED, now)
        return request

    @property
    def occupancy(self) -> Occupancy:
        return Occupancy(
            running=len(self.state.running),
            waiting=len(self.state.waiting),
            free_kv_blocks=self.blocks.num_free_blocks if self.blocks else 0,
            total_kv_blocks=self.blocks.num_blocks if self.blocks else 0,
            preemptions=self.state.num_preemptions,
            cached_kv_blocks=self.blocks.num_cached_blocks if self.blocks else 0,
            prefix_cache_queries=self.prefix_stats.queries,
            prefix_cache_hits=self.prefix_stats.hits,
            oldest_waiting_arrival=self.state.waiting.oldest_arrival,
        )

    def cached_prefix_tokens(self, request: Request) -> int:
        """How many prompt tokens of a new request this replica holds cached."""
        return self.blocks.cached_prefix_tokens(request) if self.blocks else 0

    @property
    def outstanding_tokens(self) -> int:
        """Work left: prompt tokens to compute plus tokens still to generate."""
        return sum(
            max(r.num_prefill_tokens - r.num_computed_tokens, 0)
            + r.sampling.max_tokens
            - len(r.output_token_ids)
            for r in self.requests.values()
        )

    @property
    def has_work(self) -> bool:
        return bool(self.state.waiting or self.state.running or self._freed_ids)

    # ---- workers ---------------------------------------------------------

    def attach_worker(self, geometry: WorkerGeometry) -> None:
        self.detach_worker()
        self.geometry = geometry
        self.state.pipeline_depth = geometry.pipeline_depth
        self.blocks = BlockManager(
            geometry.num_kv_blocks,
            geometry.block_size,
            self.watermark,
            caching=self.prefix_caching,
            stats=self.prefix_stats,
        )

    def detach_worker(self) -> None:
        """The worker is gone: running requests wait to be recomputed on the next one."""
        if self.blocks is not None:
            for request in reversed(list(self.state.running)):
                self.state.preempt(request, self.blocks)
        for request in self.state.waiting:
            request.on_worker = False
        self._freed_ids.clear()
        self._in_flight.clear()
        self.blocks = None

    # ---- iterations ------------------------------------------------------

    def plan(self, step_id: int, now: float) -> PlannedStep:
        """Plans the next iteration, maybe before earlier ones' results are applied: a
        decode then feeds a token the worker samples, a stop costs a token apply drops."""
        blocks = self.blocks
        assert blocks is not None, "plan() needs an attached worker"
        self.state.planning_step = step_id
        schedule = self.policy.schedule(self.state, blocks)
        # tokens per cached block; with the cache off no block ever fills
        block_size = blocks.block_size if blocks.caching else NEVER_FULL
        for victim in schedule.preempted:
            self._forget_on_worker(victim)
        new_requests, chunks, admitted = [], [], []
        rows: dict[str, tuple[Request, int]] = {}
        shape = StepShape.of(schedule.chunks, schedule.num_slo_decodes)
        for request, num_tokens in schedule.chunks:  # hot: every running request
            if request.first_scheduled_time is None:
                request.first_scheduled_time = now
                admitted.append(request)
            if not request.on_worker:
                new_requests.append(
                    NewRequest(
                        request.request_id,
                        tuple(request.all_token_ids()),
                        len(request.output_token_ids),
                        request.sampling,
                        request.num_computed_tokens,  # its cached prefix, if any
                    )
                )
                request.on_worker = True
            block_ids = request.block_ids
            new_blocks: tuple[int, ...] = ()
            if request.num_blocks_sent != len(block_ids):
                new_blocks = tuple(block_ids[request.num_blocks_sent :])
                request.num_blocks_sent = len(block_ids)
            chunks.append(ScheduledChunk(request.request_id, num_tokens, new_blocks))
            rows[request.request_id] = (request, request.num_preemptions)
            request.last_planned_step = step_id
            request.num_computed_tokens += num_tokens
            if request.num_computed_tokens >= (request.num_cached_blocks + 1) * block_size:
                blocks.cache_computed_blocks(request)  # a block is full: once in block_size
        plan = StepPlan(step_id, tuple(new_requests), tuple(chunks), tuple(self._freed_ids))
        self._freed_ids.clear()
        policy = self.policy
        planned = PlannedStep(plan, shape, tuple(admitted), policy.name, policy.last_budget, rows)
        self._in_flight.append(planned)
        return planned

    def observe(self, planned: PlannedStep, execution_ms: float, interval_ms: float | None):
        """Feeds the policy a step's time and interval (None: after idle): budgets adapt."""
        self.policy.observe(planned.shape, execution_ms, interval_ms)

    def apply(self, result: StepResult, now: float) -> list[RequestUpdate]:
        """Appends sampled tokens and finishes requests that reached a stop. Results come
        in the order of the plans; one of a step planned before the worker detached (it
        may arrive just before the detach is noticed) is dropped: its requests recompute."""
        if not self._in_flight or self._in_flight[0].plan.step_id != result.step_id:
            return []
        planned = self._in_flight.popleft()
        updates = []
        rows, logprobs_of, running = planned.rows, result.logprobs, RequestStatus.RUNNING
        geometry = self.geometry
        assert geometry is not None
        for request_id, token in result.sampled.items():  # hot: every running request
            row = rows.get(request_id)
            if row is None:
                continue
            request, incarnation = row
            if request.status is not running or request.num_preemptions != incarnation:
                continue  # ended, or preempted, while the step ran (or before it returned)
            output = request.output_token_ids
            output.append(token)
            if request.first_token_time is None:
                request.first_token_time = now
            stop = stop_reason(request, token, geometry)
            if stop is not None:
                self._finish(request, stop, now)
            logprobs = logprobs_of.get(request_id) if logprobs_of else None
            updates.append(
                RequestUpdate(
                    request,
                    (token,),
                    stop,
                    () if logprobs is None else (logprobs,),
                    len(output) - 1,
                )
            )
        for request_id, error in result.failures.items():  # rare: the worker refused them
            row = rows.get(request_id)
            if row is None or row[0].status is not running or row[0].num_preemptions != row[1]:
                continue
            request = row[0]
            request.on_worker = False  # the worker forgot it: no free to announce
            self.fail(request, error, now)
            updates.append(
                RequestUpdate(request, (), StopReason.ERROR, (), len(request.output_token_ids))
            )
        return updates

    def fail(self, request: Request, error: ServiceError, now: float) -> None:
        """Ends a request with an error. The KV it computed is not kept for others:
        it may be incomplete."""
        if self.blocks is not None:
            self.blocks.forget_cached(request)
        request.error = error
        self._finish(request, StopReason.ERROR, now)

    def charge_failed_step(self, step_id: int, now: float) -> list[Request]:
        """A step failed as a whole: see `stopping.charge_failed_step`."""
        planned = next((p for p in self._in_flight if p.plan.step_id == step_id), None)
        return [] if planned is None else charge_failed_step(planned, self.fail, now)

    def _finish(self, request: Request, reason: StopReason, now: float) -> None:
        if request.is_finished:
            return
        self.state.remove(request)
        if self.blocks is not None:
            self.blocks.free(request)
        self._forget_on_worker(request)
        request.status = RequestStatus.FINISHED
        request.stop_reason = reason
        request.finish_time = now
        del self.requests[request.request_id]

    def _forget_on_worker(self, request: Request) -> None:
        if request.on_worker:
            self._freed_ids.append(request.request_id)
            request.on_worker = False
