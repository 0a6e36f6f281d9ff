"""The gateway's Session stream to the scheduler, multiplexing all its requests.

The gateway knows one or more scheduler addresses and dials them in turn until
one leads (a standby answers UNAVAILABLE). When the stream breaks (the leader
died, a network blip) requests are not failed: the gateway reconnects, tells the
new leader how many tokens each request has received (Resume), and the streams
continue where they stopped. Only if no leader answers within
`resume_timeout_s` do the requests end with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from sarathi_serve.common.auth import InternalToken
from sarathi_serve.common.convert import logprobs_from_pb, sampling_to_pb, stop_reason_from_pb
from sarathi_serve.common.errors import (
    InvalidArgument,
    ServiceError,
    Unavailable,
    error_from_code,
)
from sarathi_serve.common.grpc_server import CHANNEL_OPTIONS
from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.common.step import TokenLogprobs
from sarathi_serve.common.stop_reason import StopReason
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 1.0


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """New tokens of one request, as the gateway's core reads them."""

    token_ids: list[int]
    logprobs: list[TokenLogprobs] = field(default_factory=list)  # parallel, when asked
    stop: StopReason | None = None  # the last event's (never ERROR: that is `error`)
    error: ServiceError | None = None  # the request failed (the last event too)


@dataclass(slots=True)
class _InFlight:
    submit: pb.Submit
    events: asyncio.Queue[TokenEvent]
    num_received: int = 0
    stopped: bool = False

    @property
    def outstanding_tokens(self) -> int:
        """Work left, as the scheduler counts it: the prompt until the first token,
        then the tokens still to generate."""
        if self.stopped:
            return 0
        prompt = 0 if self.num_received else len(self.submit.prompt_token_ids)
        return prompt + max(self.submit.sampling.max_tokens - self.num_received, 0)


class SchedulerClient:
    """One Session per gateway; each request reads its events from its own queue."""

    def __init__(
        self,
        scheduler_addrs: list[str],
        gateway_id: str,
        resume_timeout_s: float = 60.0,
        token: InternalToken | None = None,
    ):
        if not scheduler_addrs:
            raise ValueError("at least one scheduler address is needed")
        self.scheduler_addrs = scheduler_addrs
        self.token = token or InternalToken()
        self.gateway_id = gateway_id
        self.resume_timeout_s = resume_timeout_s
        self._inflight: dict[str, _InFlight] = {}
        self._outbox: asyncio.Queue[pb.SessionRequest | None] | None = None  # None: end
        self._pending_aborts: list[str] = []  # aborts made while disconnected
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.num_workers: int | None = None  # as the leader last said (None: not told)
        self.outstanding_tokens = 0  # of the requests in flight (shard routing's load)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self, drain_s: float = 2.0) -> None:
        """Ends the session after sending what is queued (aborts above all), for up to
        `drain_s`: the scheduler frees those requests now, not after its grace period."""
        if self._task is None:
            return
        self._closing = True
        if self._outbox is not None:
            self._outbox.put_nowait(None)  # the end of the request stream
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), drain_s)
        self._task.cancel()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def ready(self) -> bool:
        """Connected to a leader that has workers (one that does not say: assumed)."""
        return self.connected and self.num_workers != 0

    async def submit(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling: SamplingParams,
        timeout: float = 10.0,
        cache_salt: str = "",
        priority: int = 0,
        tenant: str = "",
    ) -> asyncio.Queue[TokenEvent]:
        """Sends a request; returns the queue its events arrive on."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except asyncio.TimeoutError:
            raise Unavailable(f"no scheduler leads at {', '.join(self.scheduler_addrs)}") from None
        if request_id in self._inflight:
            raise InvalidArgument(
                f"request_id: {request_id!r} is already in flight on this gateway"
            )
        submit = pb.Submit(
            request_id=request_id,
            prompt_token_ids=prompt_token_ids,
            sampling=sampling_to_pb(sampling),
            cache_salt=cache_salt,
            priority=priority,
            tenant=tenant,
        )
        entry = _InFlight(submit, asyncio.Queue())
        self._inflight[request_id] = entry
        self.outstanding_tokens += entry.outstanding_tokens
        self._send(pb.SessionRequest(submit=submit))
        return entry.events

    def abort(self, request_id: str) -> None:
        """Forgets the request and tells the scheduler (now, or once reconnected)."""
        if self._forget(request_id) is None:
            return
        if self._outbox is None:
            self._pending_aborts.append(request_id)
        else:
            self._send(pb.SessionRequest(abort=pb.Abort(request_id=request_id)))

    def release(self, request_id: str) -> None:
        self._forget(request_id)

    def _forget(self, request_id: str) -> _InFlight | None:
        entry = self._inflight.pop(request_id, None)
        if entry is not None:
            self.outstanding_tokens -= entry.outstanding_tokens
        return entry

    def _send(self, msg: pb.SessionRequest) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(msg)
        # else: the reconnect resumes every request in flight

    async def _run(self) -> None:
        attempt, backoff = 0, 0.05
        disconnected_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            addr = self.scheduler_addrs[attempt % len(self.scheduler_addrs)]
            try:
                async with grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS) as channel:
                    await self._session(pb_grpc.SchedulerStub(channel), addr)
                    if self._closing:
                        return
            except grpc.aio.AioRpcError as exc:
                if self._connected.is_set() or exc.code() != grpc.StatusCode.UNAVAILABLE:
                    log.warning(
                        "session with %s ended: %s %s", addr, exc.code().name, exc.details()
                    )
            if self._connected.is_set():  # it was up: start the clock of this outage
                disconnected_since, backoff = loop.time(), 0.05
            self._connected.clear()
            self._outbox = None
            disconnected_since = disconnected_since or loop.time()
            if loop.time() - disconnected_since > self.resume_timeout_s:
                self.fail_all(
                    Unavailable(f"no scheduler leads at {', '.join(self.scheduler_addrs)}")
                )
                disconnected_since = loop.time()
            attempt += 1
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, _MAX_BACKOFF_S)

    async def _session(self, stub: pb_grpc.SchedulerStub, addr: str) -> None:
        outbox: asyncio.Queue[pb.SessionRequest | None] = asyncio.Queue()
        outbox.put_nowait(pb.SessionRequest(hello=pb.SessionHello(gateway_id=self.gateway_id)))
        for request_id in self._pending_aborts:
            outbox.put_nowait(pb.SessionRequest(abort=pb.Abort(request_id=request_id)))
        self._pending_aborts.clear()
        for entry in self._inflight.values():
            resume = pb.Resume(submit=entry.submit, num_received_tokens=entry.num_received)
            outbox.put_nowait(pb.SessionRequest(resume=resume))

        async def requests() -> AsyncIterator[pb.SessionRequest]:
            while (message := await outbox.get()) is not None:
                yield message

        # A leader answers at once with an empty batch; a standby fails the call.
        self.num_workers = None
        call = stub.Session(requests(), metadata=self.token.metadata)
        try:
            async for batch in call:
                if not self._connected.is_set():
                    self._mark_connected(outbox, addr)
                if batch.HasField("num_workers"):
                    self.num_workers = batch.num_workers
                self._dispatch(batch)
        finally:  # gRPC's task feeding requests() waits on the outbox: end it, not leak it
            outbox.put_nowait(None)
            call.cancel()

    def _mark_connected(self, outbox: asyncio.Queue[pb.SessionRequest | None], addr: str) -> None:
        self._outbox = outbox
        self._connected.set()
        log.info("session with scheduler %s open (%d requests resumed)", addr, len(self._inflight))

    def _dispatch(self, batch: pb.SessionEvents) -> None:
        """Hands each request its new tokens. After a failover the new leader recomputes
        tokens the client already has: they carry their index, and are dropped here."""
        for request_id, token, index in zip(
            batch.token_request_ids, batch.token_ids, batch.token_indexes, strict=True
        ):
            entry = self._inflight.get(request_id)
            if entry is None or index < entry.num_received:
                continue
            self._received(entry, 1)
            entry.events.put_nowait(TokenEvent([token]))
        for event in batch.events:
            entry = self._inflight.get(event.request_id)
            if entry is None:
                continue
            stop = stop_reason_from_pb(event.stop_reason)
            if stop is StopReason.ERROR:
                self._received(entry, 0, stopped=True)
                error = error_from_code(event.error_code, event.error_message)
                entry.events.put_nowait(TokenEvent([], error=error))
                continue
            overlap = max(entry.num_received - event.first_token_index, 0)
            token_ids = list(event.token_ids)[overlap:]
            if not token_ids and stop is None:
                continue
            self._received(entry, len(token_ids), stopped=stop is not None)
            logprobs = [logprobs_from_pb(lp) for lp in event.logprobs[overlap:]]
            entry.events.put_nowait(TokenEvent(token_ids, logprobs, stop))

    def _received(self, entry: _InFlight, num_tokens: int, stopped: bool = False) -> None:
        before = entry.outstanding_tokens
        entry.num_received += num_tokens
        entry.stopped = entry.stopped or stopped
        self.outstanding_tokens += entry.outstanding_tokens - before

    def fail_all(self, error: ServiceError) -> None:
        """Ends every request in flight with `error`, and aborts each at the scheduler."""
        for request_id in list(self._inflight):
            entry = self._inflight[request_id]
            self.abort(request_id)
            entry.events.put_nowait(TokenEvent([], error=error))
