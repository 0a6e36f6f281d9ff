"""The scheduler's end of a worker's Attach stream."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from sarathi_serve.common.convert import plan_to_pb, result_from_pb
from sarathi_serve.common.step import StepPlan, StepResult, WorkerGeometry
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.scheduler.iteration import PlannedStep


class WorkerLost(Exception):
    """The worker's stream broke, or it failed a step; its requests must be recomputed.
    `failed_step`: the step the worker reported failed as a whole (None: the stream broke)."""

    def __init__(self, message: str, failed_step: int | None = None):
        super().__init__(message)
        self.failed_step = failed_step


class WorkerLink:
    """Sends plans and resolves each with the worker's result, in order (the worker runs
    them one after another; the next plan may be sent while the worker runs one)."""

    def __init__(self, worker_id: str, geometry: WorkerGeometry):
        self.worker_id = worker_id
        self.geometry = geometry
        self.outbox: asyncio.Queue[pb.StepPlan | None] = asyncio.Queue()
        self._pending: deque[asyncio.Future[StepResult]] = deque()
        self.closed = False

    def send(self, plan: StepPlan) -> asyncio.Future[StepResult]:
        """Sends a plan now; the future resolves with its result (or WorkerLost)."""
        future: asyncio.Future[StepResult] = asyncio.get_running_loop().create_future()
        if self.closed:
            _fail(future, WorkerLost(f"worker {self.worker_id} is gone"))
            return future
        self._pending.append(future)
        self.outbox.put_nowait(plan_to_pb(plan))
        return future

    def deliver(self, msg: pb.StepResult) -> None:
        if not self._pending:
            return
        future = self._pending.popleft()
        if future.done():
            return
        if msg.error:
            message = f"worker {self.worker_id} failed step {msg.step_id}: {msg.error}"
            future.set_exception(WorkerLost(message, failed_step=msg.step_id))
        else:
            future.set_result(result_from_pb(msg))

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                _fail(future, WorkerLost(f"worker {self.worker_id}: {reason}"))
        self.outbox.put_nowait(None)


def _fail(future: asyncio.Future[StepResult], error: WorkerLost) -> None:
    """Fails a step. With a plan sent ahead, nobody may wait for the later step once the
    earlier one failed: the error counts as seen, so asyncio does not log it."""
    future.set_exception(error)
    future.exception()


@dataclass(frozen=True, slots=True)
class InFlight:
    """A step planned and sent to a worker; its result is not applied yet."""

    worker: WorkerLink
    planned: PlannedStep
    result: asyncio.Future[StepResult] | None  # None: nothing sent (nothing to compute)
    start_time: float  # unix seconds
    scheduling_s: float
    after_idle: bool  # nothing was in flight: the worker's wait is not the control plane's
    sent_at: float  # perf_counter seconds
    served: bool = True  # requests were running as it was planned (the worker's idle counts)
