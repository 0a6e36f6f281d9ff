"""gRPC edge of the scheduler: Session (gateways), Attach (workers), admin RPCs.

It converts protobuf and calls the front (`front.py`); nothing else in the
scheduler sees a protobuf message. Until this scheduler holds the leader lease it
is a standby: its hot-path RPCs answer UNAVAILABLE so that gateways and workers
move on to the leader.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc

from sarathi_serve.common.convert import geometry_from_pb, sampling_from_pb, session_events_to_pb
from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc
from sarathi_serve.scheduler.front import ROUTING_SCORE, SchedulerFront
from sarathi_serve.scheduler.request import Request
from sarathi_serve.scheduler.sessions import Outbox
from sarathi_serve.scheduler.workers import WorkerLink

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Scheduler"].full_name
STANDBY = "standby scheduler: dial the leader"


def add_scheduler_service(server: grpc.aio.Server, servicer: SchedulerServicer) -> None:
    pb_grpc.add_SchedulerServicer_to_server(servicer, server)


class SchedulerServicer(pb_grpc.SchedulerServicer):
    def __init__(self, scheduler_id: str):
        self.scheduler_id = scheduler_id
        self.front: SchedulerFront | None = None  # set when this scheduler leads
        self.epoch = 0

    def activate(self, front: SchedulerFront, epoch: int) -> None:
        self.front, self.epoch = front, epoch

    def deactivate(self) -> None:
        self.front = None

    async def _leader(self, context: grpc.aio.ServicerContext) -> SchedulerFront:
        if self.front is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, STANDBY)
        assert self.front is not None
        return self.front

    # ---- gateways -------------------------------------------------------------

    async def Session(
        self, request_iterator: AsyncIterator[pb.SessionRequest], context: grpc.aio.ServicerContext
    ) -> None:
        front = await self._leader(context)
        first = await context.read()
        if first is grpc.aio.EOF or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session starts with hello")
        gateway_id = first.hello.gateway_id or f"gateway-{uuid.uuid4().hex[:8]}"
        outbox = front.sessions.open(gateway_id)
        reader = asyncio.create_task(self._read_session(front, gateway_id, outbox, context))
        try:
            while (batch := await outbox.get()) is not None:
                await context.write(session_events_to_pb(batch))
        finally:
            reader.cancel()
            front.sessions.close(gateway_id, outbox)

    async def _read_session(
        self,
        front: SchedulerFront,
        gateway_id: str,
        outbox: Outbox,
        context: grpc.aio.ServicerContext,
    ) -> None:
        sessions = front.sessions
        try:
            while (msg := await context.read()) is not grpc.aio.EOF:
                kind = msg.WhichOneof("kind")
                if kind == "abort":
                    front.abort(msg.abort.request_id)
                if kind not in ("submit", "resume"):
                    continue
                submit = msg.resume.submit if kind == "resume" else msg.submit
                try:
                    request = _request_from_pb(submit, gateway_id)
                except ValueError as exc:  # a parameter out of range
                    sessions.reject(gateway_id, submit.request_id, InvalidArgument(str(exc)))
                    continue
                if kind == "resume":
                    await sessions.resume(gateway_id, request, msg.resume.num_received_tokens)
                else:
                    sessions.submit(gateway_id, request)
        finally:
            outbox.put_nowait(None)  # ends the writer

    # ---- workers --------------------------------------------------------------

    async def Attach(
        self, request_iterator: AsyncIterator[pb.WorkerMessage], context: grpc.aio.ServicerContext
    ) -> None:
        front = await self._leader(context)
        first = await context.read()
        if first is grpc.aio.EOF or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an attach starts with hello")
        link = WorkerLink(first.hello.worker_id, geometry_from_pb(first.hello))
        front.attach(link)
        reader = asyncio.create_task(self._read_results(front, link, context))
        try:
            while (plan := await link.outbox.get()) is not None:
                await context.write(plan)
        finally:
            reader.cancel()
            front.detach(link, "stream closed")

    async def _read_results(
        self, front: SchedulerFront, link: WorkerLink, context: grpc.aio.ServicerContext
    ) -> None:
        try:
            while (msg := await context.read()) is not grpc.aio.EOF:
                if msg.HasField("result"):
                    link.deliver(msg.result)
        finally:
            front.detach(link, "worker closed its stream")

    # ---- admin ----------------------------------------------------------------

    async def SetPolicy(
        self, request: pb.SetPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetPolicyResponse:
        front = await self._leader(context)
        try:
            policy, first_step = front.swap_policy(
                request.policy,
                token_budget=_optional(request, "token_budget"),
                max_num_seqs=_optional(request, "max_num_seqs"),
                target_tbt_ms=_optional(request, "target_tbt_ms"),
                target_tbt_factor=_optional(request, "target_tbt_factor"),
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.SetPolicyResponse(
            policy=policy.name,
            token_budget=policy.token_budget,
            max_num_seqs=policy.max_num_seqs,
            first_step_id=first_step,
        )

    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        front = self.front
        reply = pb.GetStatsResponse(scheduler_id=self.scheduler_id, is_leader=front is not None)
        if front is None:
            return reply
        total = front.occupancy
        reply.iterations.extend(
            pb.IterationStats(**_fields(s)) for s in front.stats.recent(request.max_iterations)
        )
        reply.num_waiting = total.waiting
        reply.num_running = total.running
        reply.num_free_kv_blocks = total.free_kv_blocks
        reply.num_total_kv_blocks = total.total_kv_blocks
        reply.num_workers = front.num_workers
        reply.policy = front.policy.name
        reply.token_budget = front.policy.token_budget
        reply.num_finished = front.stats.num_finished
        reply.num_preemptions = total.preemptions
        for replica in front.replicas:
            occupancy = replica.occupancy
            reply.replicas.add(
                index=replica.index,
                worker_id=replica.worker_id,
                num_running=occupancy.running,
                num_waiting=occupancy.waiting,
                num_free_kv_blocks=occupancy.free_kv_blocks,
                num_total_kv_blocks=occupancy.total_kv_blocks,
                prefix_cache_queries=occupancy.prefix_cache_queries,
                prefix_cache_hits=occupancy.prefix_cache_hits,
                num_cached_kv_blocks=occupancy.cached_kv_blocks,
                stage_busy_seconds=replica.stage_times.busy_s,
                stage_idle_seconds=replica.stage_times.idle_s,
            )
        reply.routing_score = ROUTING_SCORE
        reply.epoch = self.epoch
        return reply


def _request_from_pb(msg: pb.Submit, gateway_id: str) -> Request:
    return Request(
        request_id=msg.request_id,
        prompt_token_ids=list(msg.prompt_token_ids),
        sampling=sampling_from_pb(msg.sampling),
        session_id=gateway_id,
        arrival_time=time.time(),
        cache_salt=msg.cache_salt,
        priority=msg.priority,
        tenant=msg.tenant,
    )


def _optional(msg: pb.SetPolicyRequest, name: str) -> int | float | None:
    return getattr(msg, name) if msg.HasField(name) else None  # type: ignore[arg-type]


def _fields(obj: object) -> dict[str, object]:
    return {name: getattr(obj, name) for name in obj.__slots__}  # type: ignore[attr-defined]
