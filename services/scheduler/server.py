"""gRPC edge of the scheduler: Session (gateways), Attach (workers), GetStats."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc

from sarathi_serve.common.convert import sampling_from_pb
from sarathi_serve.common.errors import ServiceError, status_of
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc
from sarathi_serve.scheduler.core import WorkerGeometry
from sarathi_serve.scheduler.loop import IterationLoop
from sarathi_serve.scheduler.policies import make_policy
from sarathi_serve.scheduler.request import Request
from sarathi_serve.scheduler.workers import WorkerLink

log = logging.getLogger(__name__)


class SchedulerServicer(pb_grpc.SchedulerServicer):
    def __init__(self, loop: IterationLoop):
        self.loop = loop

    async def Session(
        self, request_iterator: AsyncIterator[pb.SessionRequest], context: grpc.aio.ServicerContext
    ) -> None:
        first = await context.read()
        if first is grpc.aio.EOF or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session starts with hello")
        session_id, outbox = self.loop.hub.open(first.hello.gateway_id)
        log.info("session %s opened", session_id)
        reader = asyncio.create_task(self._read_session(session_id, outbox, context))
        try:
            while (events := await outbox.get()) is not None:
                await context.write(events)
        finally:
            reader.cancel()
            self.loop.hub.close(session_id)
            self.loop.abort_session(session_id)
            log.info("session %s closed", session_id)

    async def _read_session(
        self,
        session_id: str,
        outbox: asyncio.Queue[pb.SessionEvents | None],
        context: grpc.aio.ServicerContext,
    ) -> None:
        try:
            while (msg := await context.read()) is not grpc.aio.EOF:
                kind = msg.WhichOneof("kind")
                if kind == "submit":
                    self._submit(session_id, msg.submit)
                elif kind == "abort":
                    self.loop.abort(msg.abort.request_id)
        finally:
            outbox.put_nowait(None)  # ends the writer

    def _submit(self, session_id: str, msg: pb.Submit) -> None:
        try:
            request = Request(
                request_id=msg.request_id,
                prompt_token_ids=list(msg.prompt_token_ids),
                sampling=sampling_from_pb(msg.sampling),
                session_id=session_id,
                arrival_time=time.time(),
            )
            self.loop.submit(request)
        except (ServiceError, ValueError) as exc:
            code, message = status_of(exc)
            if isinstance(exc, ValueError) and not isinstance(exc, ServiceError):
                code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            self.loop.hub.reject(session_id, msg.request_id, code.name, message)

    async def Attach(
        self, request_iterator: AsyncIterator[pb.WorkerMessage], context: grpc.aio.ServicerContext
    ) -> None:
        first = await context.read()
        if first is grpc.aio.EOF or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an attach starts with hello")
        hello = first.hello
        geometry = WorkerGeometry(
            num_kv_blocks=hello.num_kv_blocks,
            block_size=hello.block_size,
            max_model_len=hello.max_model_len,
            eos_token_id=hello.eos_token_id,
        )
        link = WorkerLink(hello.worker_id, geometry)
        try:
            self.loop.attach(link)
        except ServiceError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        reader = asyncio.create_task(self._read_results(link, context))
        try:
            while (plan := await link.outbox.get()) is not None:
                await context.write(plan)
        finally:
            reader.cancel()
            self.loop.detach(link, "stream closed")

    async def _read_results(self, link: WorkerLink, context: grpc.aio.ServicerContext) -> None:
        try:
            while (msg := await context.read()) is not grpc.aio.EOF:
                if msg.HasField("result"):
                    link.deliver(msg.result)
        finally:
            self.loop.detach(link, "worker closed its stream")

    async def SetPolicy(
        self, request: pb.SetPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetPolicyResponse:
        current = self.loop.core.policy
        try:
            policy = make_policy(
                request.policy,
                token_budget=request.token_budget
                if request.HasField("token_budget")
                else current.token_budget,
                max_num_seqs=request.max_num_seqs
                if request.HasField("max_num_seqs")
                else current.max_num_seqs,
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        first_step = self.loop.set_policy(policy)
        return pb.SetPolicyResponse(
            policy=policy.name,
            token_budget=policy.token_budget,
            max_num_seqs=policy.max_num_seqs,
            first_step_id=first_step,
        )

    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        core = self.loop.core
        blocks = core.blocks
        policy = core.policy
        return pb.GetStatsResponse(
            iterations=[
                pb.IterationStats(**vars_of(s))
                for s in self.loop.stats.recent(request.max_iterations)
            ],
            num_waiting=len(core.state.waiting),
            num_running=len(core.state.running),
            num_free_kv_blocks=blocks.num_free_blocks if blocks else 0,
            num_total_kv_blocks=blocks.num_blocks if blocks else 0,
            num_workers=int(self.loop.worker is not None),
            policy=policy.name,
            token_budget=policy.token_budget,
            num_finished=self.loop.stats.num_finished,
            num_preemptions=core.state.num_preemptions,
        )


def vars_of(obj: object) -> dict[str, object]:
    return {name: getattr(obj, name) for name in obj.__slots__}  # type: ignore[attr-defined]
