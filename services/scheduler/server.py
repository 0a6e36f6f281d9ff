"""gRPC edge of the scheduler: Session (gateways), Attach (workers), admin RPCs.

Until this scheduler holds the leader lease it is a standby: its hot-path RPCs
answer UNAVAILABLE so that gateways and workers move on to the leader.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator

import grpc

from sarathi_serve.common.convert import geometry_from_pb, sampling_from_pb, stop_reason_to_pb
from sarathi_serve.common.errors import ServiceError
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc
from sarathi_serve.scheduler.loop import IterationLoop
from sarathi_serve.scheduler.policies import Policy, make_policy
from sarathi_serve.scheduler.policies.sarathi import SarathiPolicy
from sarathi_serve.scheduler.request import Request, StopReason
from sarathi_serve.scheduler.sessions import Outbox
from sarathi_serve.scheduler.workers import WorkerLink

log = logging.getLogger(__name__)

STANDBY = "standby scheduler: dial the leader"


class SchedulerServicer(pb_grpc.SchedulerServicer):
    def __init__(self, scheduler_id: str):
        self.scheduler_id = scheduler_id
        self.loop: IterationLoop | None = None  # set when this scheduler leads
        self.epoch = 0

    def activate(self, loop: IterationLoop, epoch: int) -> None:
        self.loop, self.epoch = loop, epoch

    async def _leader_loop(self, context: grpc.aio.ServicerContext) -> IterationLoop:
        if self.loop is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, STANDBY)
        assert self.loop is not None
        return self.loop

    # ---- gateways -------------------------------------------------------------

    async def Session(
        self, request_iterator: AsyncIterator[pb.SessionRequest], context: grpc.aio.ServicerContext
    ) -> None:
        loop = await self._leader_loop(context)
        first = await context.read()
        if first is grpc.aio.EOF or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session starts with hello")
        gateway_id = first.hello.gateway_id or f"gateway-{uuid.uuid4().hex[:8]}"
        outbox = loop.hub.open(gateway_id)
        outbox.put_nowait(pb.SessionEvents())  # tells the gateway this is the leader
        loop.cancel_session_expiry(gateway_id)
        log.info("session of gateway %s opened", gateway_id)
        reader = asyncio.create_task(self._read_session(loop, gateway_id, outbox, context))
        try:
            while (events := await outbox.get()) is not None:
                await context.write(events)
        finally:
            reader.cancel()
            if loop.hub.close(gateway_id, outbox):
                loop.expire_session_later(gateway_id)
            log.info("session of gateway %s closed", gateway_id)

    async def _read_session(
        self,
        loop: IterationLoop,
        gateway_id: str,
        outbox: Outbox,
        context: grpc.aio.ServicerContext,
    ) -> None:
        try:
            while (msg := await context.read()) is not grpc.aio.EOF:
                kind = msg.WhichOneof("kind")
                if kind == "submit":
                    self._submit(loop, gateway_id, msg.submit)
                elif kind == "abort":
                    loop.abort(msg.abort.request_id)
                elif kind == "resume":
                    await self._resume(loop, gateway_id, msg.resume)
        finally:
            outbox.put_nowait(None)  # ends the writer

    def _submit(self, loop: IterationLoop, gateway_id: str, msg: pb.Submit) -> None:
        try:
            sampling = sampling_from_pb(msg.sampling)
            if sampling.seed is None and not sampling.is_greedy:
                # A seed of our own, kept in Redis: a recomputed request draws the same tokens.
                sampling = dataclasses.replace(sampling, seed=random.getrandbits(62))
            request = Request(
                request_id=msg.request_id,
                prompt_token_ids=list(msg.prompt_token_ids),
                sampling=sampling,
                session_id=gateway_id,
                arrival_time=time.time(),
            )
            loop.submit(request)
        except (ServiceError, ValueError) as exc:  # a ValueError is a parameter out of range
            code = exc.code if isinstance(exc, ServiceError) else grpc.StatusCode.INVALID_ARGUMENT
            loop.hub.reject(gateway_id, msg.request_id, code.name, str(exc))

    async def _resume(self, loop: IterationLoop, gateway_id: str, msg: pb.Resume) -> None:
        """Catches a reconnected gateway up on a request, then lets it stream on."""
        request_id, received = msg.submit.request_id, msg.num_received_tokens
        request = loop.find(request_id)
        if request is not None:
            request.session_id = gateway_id
            request.awaiting_resume = False
            missing = request.output_token_ids[received : request.num_released]
            event = pb.RequestEvent(
                request_id=request_id, token_ids=missing, first_token_index=received
            )
            loop.hub.send(gateway_id, [event])
            return
        finished = await loop.load_finished(request_id)
        if finished is not None:
            tokens, reason = finished
            stop = stop_reason_to_pb(StopReason(reason))
            event = pb.RequestEvent(
                request_id=request_id,
                token_ids=tokens[received:],
                first_token_index=received,
                stop_reason=stop,
            )
            loop.hub.send(gateway_id, [event])
        elif received == 0:
            self._submit(loop, gateway_id, msg.submit)  # never reached Redis: start it here
        else:
            message = f"request {request_id} was lost with its scheduler"
            loop.hub.reject(gateway_id, request_id, grpc.StatusCode.UNAVAILABLE.name, message)

    # ---- workers --------------------------------------------------------------

    async def Attach(
        self, request_iterator: AsyncIterator[pb.WorkerMessage], context: grpc.aio.ServicerContext
    ) -> None:
        loop = await self._leader_loop(context)
        first = await context.read()
        if first is grpc.aio.EOF or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an attach starts with hello")
        hello = first.hello
        link = WorkerLink(hello.worker_id, geometry_from_pb(hello))
        loop.attach(link)
        reader = asyncio.create_task(self._read_results(loop, link, context))
        try:
            while (plan := await link.outbox.get()) is not None:
                await context.write(plan)
        finally:
            reader.cancel()
            loop.detach(link, "stream closed")

    async def _read_results(
        self, loop: IterationLoop, link: WorkerLink, context: grpc.aio.ServicerContext
    ) -> None:
        try:
            while (msg := await context.read()) is not grpc.aio.EOF:
                if msg.HasField("result"):
                    link.deliver(msg.result)
        finally:
            loop.detach(link, "worker closed its stream")

    # ---- admin ----------------------------------------------------------------

    async def SetPolicy(
        self, request: pb.SetPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetPolicyResponse:
        loop = await self._leader_loop(context)
        current = loop.policy
        token_budget = (
            request.token_budget if request.HasField("token_budget") else current.token_budget
        )
        max_num_seqs = (
            request.max_num_seqs if request.HasField("max_num_seqs") else current.max_num_seqs
        )
        options = (
            current.options()
            if isinstance(current, SarathiPolicy) and request.policy == "sarathi"
            else {}
        )
        if request.HasField("target_tbt_ms"):
            options["target_tbt_ms"] = request.target_tbt_ms

        def make() -> Policy:
            return make_policy(
                request.policy, token_budget=token_budget, max_num_seqs=max_num_seqs, **options
            )

        try:
            policy = make()
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        first_step = loop.set_policy(make)
        return pb.SetPolicyResponse(
            policy=policy.name,
            token_budget=policy.token_budget,
            max_num_seqs=policy.max_num_seqs,
            first_step_id=first_step,
        )

    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        reply = pb.GetStatsResponse(scheduler_id=self.scheduler_id, is_leader=self.loop is not None)
        if self.loop is None:
            return reply
        loop = self.loop
        total = loop.occupancy
        reply.iterations.extend(
            pb.IterationStats(**vars_of(s)) for s in loop.stats.recent(request.max_iterations)
        )
        reply.num_waiting = total.waiting
        reply.num_running = total.running
        reply.num_free_kv_blocks = total.free_kv_blocks
        reply.num_total_kv_blocks = total.total_kv_blocks
        reply.num_workers = loop.num_workers
        reply.policy = loop.policy.name
        reply.token_budget = loop.policy.token_budget
        reply.num_finished = loop.stats.num_finished
        reply.num_preemptions = total.preemptions
        for r in loop.replicas:
            occupancy = r.core.occupancy
            reply.replicas.add(
                index=r.index,
                worker_id=r.worker.worker_id if r.has_worker and r.worker else "",
                num_running=occupancy.running,
                num_waiting=occupancy.waiting,
                num_free_kv_blocks=occupancy.free_kv_blocks,
                num_total_kv_blocks=occupancy.total_kv_blocks,
            )
        reply.epoch = self.epoch
        return reply


def vars_of(obj: object) -> dict[str, object]:
    return {name: getattr(obj, name) for name in obj.__slots__}  # type: ignore[attr-defined]
