"""The scheduler's end of a worker's Attach stream."""

from __future__ import annotations

import asyncio

from sarathi_serve.common.convert import plan_to_pb, result_from_pb
from sarathi_serve.common.step import StepPlan, StepResult
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.scheduler.core import WorkerGeometry


class WorkerLost(Exception):
    """The worker's stream broke, or it failed a step; its requests must be recomputed."""


class WorkerLink:
    """Sends one plan at a time and resolves it with the worker's result."""

    def __init__(self, worker_id: str, geometry: WorkerGeometry):
        self.worker_id = worker_id
        self.geometry = geometry
        self.outbox: asyncio.Queue[pb.StepPlan | None] = asyncio.Queue()
        self._pending: asyncio.Future[StepResult] | None = None
        self.closed = False

    async def step(self, plan: StepPlan) -> StepResult:
        if self.closed:
            raise WorkerLost(f"worker {self.worker_id} is gone")
        future: asyncio.Future[StepResult] = asyncio.get_running_loop().create_future()
        self._pending = future
        self.outbox.put_nowait(plan_to_pb(plan))
        return await future

    def deliver(self, msg: pb.StepResult) -> None:
        future, self._pending = self._pending, None
        if future is None or future.done():
            return
        if msg.error:
            future.set_exception(
                WorkerLost(f"worker {self.worker_id} failed step {msg.step_id}: {msg.error}")
            )
        else:
            future.set_result(result_from_pb(msg))

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._pending is not None and not self._pending.done():
            self._pending.set_exception(WorkerLost(f"worker {self.worker_id}: {reason}"))
        self.outbox.put_nowait(None)
