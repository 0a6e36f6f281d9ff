"""The gateway's Session stream to the scheduler, multiplexing all its requests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from sarathi_serve.common.convert import sampling_to_pb
from sarathi_serve.common.errors import Unavailable
from sarathi_serve.common.grpc_server import CHANNEL_OPTIONS
from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 2.0


class SchedulerClient:
    """One Session per gateway; each request reads its events from its own queue."""

    def __init__(self, scheduler_addr: str, gateway_id: str):
        self.scheduler_addr = scheduler_addr
        self.gateway_id = gateway_id
        self._streams: dict[str, asyncio.Queue[pb.RequestEvent]] = {}
        self._outbox: asyncio.Queue[pb.SessionRequest] | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def submit(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling: SamplingParams,
        timeout: float = 10.0,
    ) -> asyncio.Queue[pb.RequestEvent]:
        """Sends a request; returns the queue its events arrive on."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except asyncio.TimeoutError:
            raise Unavailable(f"scheduler at {self.scheduler_addr} is unreachable") from None
        if request_id in self._streams:
            raise Unavailable(f"request_id {request_id!r} is already in flight on this gateway")
        events: asyncio.Queue[pb.RequestEvent] = asyncio.Queue()
        self._streams[request_id] = events
        submit = pb.Submit(
            request_id=request_id,
            prompt_token_ids=prompt_token_ids,
            sampling=sampling_to_pb(sampling),
        )
        assert self._outbox is not None
        self._outbox.put_nowait(pb.SessionRequest(submit=submit))
        return events

    def abort(self, request_id: str) -> None:
        """Forgets the request and tells the scheduler (no-op if disconnected)."""
        if self._streams.pop(request_id, None) is not None and self._outbox is not None:
            self._outbox.put_nowait(pb.SessionRequest(abort=pb.Abort(request_id=request_id)))

    def release(self, request_id: str) -> None:
        self._streams.pop(request_id, None)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with grpc.aio.insecure_channel(
                    self.scheduler_addr, options=CHANNEL_OPTIONS
                ) as channel:
                    await self._session(pb_grpc.SchedulerStub(channel))
                    backoff = 0.1
            except grpc.aio.AioRpcError as exc:
                log.warning("session with %s broke: %s", self.scheduler_addr, exc.code())
            self._connected.clear()
            self._fail_all("lost the session with the scheduler")
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, _MAX_BACKOFF_S)

    async def _session(self, stub: pb_grpc.SchedulerStub) -> None:
        outbox: asyncio.Queue[pb.SessionRequest] = asyncio.Queue()
        outbox.put_nowait(pb.SessionRequest(hello=pb.SessionHello(gateway_id=self.gateway_id)))

        async def requests() -> AsyncIterator[pb.SessionRequest]:
            while True:
                yield await outbox.get()

        call = stub.Session(requests(), wait_for_ready=True)
        await call.wait_for_connection()
        self._outbox = outbox
        self._connected.set()
        log.info("session with scheduler %s open", self.scheduler_addr)
        async for batch in call:
            for event in batch.events:
                queue = self._streams.get(event.request_id)
                if queue is not None:
                    queue.put_nowait(event)

    def _fail_all(self, message: str) -> None:
        self._outbox = None
        for queue in self._streams.values():
            queue.put_nowait(
                pb.RequestEvent(
                    stop_reason=pb.STOP_REASON_ERROR,
                    error_code=grpc.StatusCode.UNAVAILABLE.name,
                    error_message=message,
                )
            )
        self._streams.clear()
