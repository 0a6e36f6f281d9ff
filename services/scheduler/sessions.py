"""Gateway sessions: one outbound queue of batched token events per gateway, the grace
period of a gateway that went away, and the catch-up of a gateway that comes back.

A session belongs to a gateway id, which is stable across reconnects. A request
recovered by a new leader is held (`awaiting_resume`) until its gateway resumes
it, so that the catch-up tokens go out before any new one, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Protocol

from sarathi_serve.common.errors import ServiceError, Unavailable
from sarathi_serve.common.session import RequestEvent, SessionEvents
from sarathi_serve.common.stop_reason import StopReason
from sarathi_serve.scheduler.iteration import RequestUpdate
from sarathi_serve.scheduler.request import Request
from sarathi_serve.scheduler.store import FinishedRequest

log = logging.getLogger(__name__)

Outbox = asyncio.Queue[SessionEvents | None]  # None ends the stream's writer


class Requests(Protocol):
    """What sessions need of the scheduler's requests (the front implements it)."""

    def submit(self, request: Request) -> None: ...

    def reclaim(self, request_id: str, gateway_id: str) -> list[int] | None:
        """Hands an in-flight request to `gateway_id`: its released tokens, or None."""
        ...

    def abort_session(self, gateway_id: str) -> None: ...

    def hold_session(self, gateway_id: str) -> None:
        """Sends nothing more of the gateway's requests until each is resumed."""
        ...

    async def load_finished(self, request_id: str) -> FinishedRequest | None: ...


class Sessions:
    def __init__(self, requests: Requests, grace_s: float = 30.0):
        self.requests = requests
        self.grace_s = grace_s
        self.num_workers = 0  # told to every gateway when it changes
        self._queues: dict[str, Outbox] = {}
        self._expiries: dict[str, asyncio.TimerHandle] = {}

    # ---- streams ------------------------------------------------------------

    def open(self, gateway_id: str) -> Outbox:
        """A new stream of this gateway; an older one of the same gateway is ended.
        The first message (empty) tells the gateway that this scheduler leads. The
        gateway's requests from before are held until it resumes each one: a token
        released before the resume goes out with its catch-up, in order, not ahead."""
        old = self._queues.get(gateway_id)
        if old is not None:
            old.put_nowait(None)
        self.requests.hold_session(gateway_id)
        queue: Outbox = asyncio.Queue()
        queue.put_nowait(SessionEvents(num_workers=self.num_workers))
        self._queues[gateway_id] = queue
        self._cancel_expiry(gateway_id)
        log.info("session of gateway %s opened", gateway_id)
        return queue

    def close(self, gateway_id: str, queue: Outbox) -> None:
        """The stream ended: unless a newer stream of the gateway replaced it, the
        gateway's requests are aborted if it does not come back within the grace."""
        log.info("session of gateway %s closed", gateway_id)
        if self._queues.get(gateway_id) is queue:
            del self._queues[gateway_id]
            self.expire_later(gateway_id)

    def close_all(self) -> None:
        """Ends every session's stream (the scheduler stops leading)."""
        for queue in self._queues.values():
            queue.put_nowait(None)

    def is_open(self, gateway_id: str) -> bool:
        return gateway_id in self._queues

    # ---- events -------------------------------------------------------------

    def dispatch(self, updates: Iterable[RequestUpdate], ended: Iterable[Request] = ()) -> None:
        """Sends one SessionEvents per gateway for this iteration."""
        for gateway_id, batch in batch_by_session(updates, ended).items():
            self._put(gateway_id, batch)

    def workers_changed(self, num_workers: int) -> None:
        """Tells every gateway how many workers are attached now."""
        if num_workers == self.num_workers:
            return
        self.num_workers = num_workers
        for queue in self._queues.values():
            queue.put_nowait(SessionEvents(num_workers=num_workers))

    def send(self, gateway_id: str, event: RequestEvent) -> None:
        self._put(gateway_id, SessionEvents(events=[event]))

    def reject(self, gateway_id: str, request_id: str, error: ServiceError) -> None:
        event = RequestEvent(request_id, stop_reason=StopReason.ERROR, **_error_fields(error))
        self.send(gateway_id, event)

    def _put(self, gateway_id: str, batch: SessionEvents) -> None:
        queue = self._queues.get(gateway_id)
        if queue is not None:  # else the gateway is gone; a resume catches it up
            queue.put_nowait(batch)

    # ---- a gateway that comes back ------------------------------------------

    def submit(self, gateway_id: str, request: Request) -> None:
        """Accepts a request, or tells the gateway why not."""
        try:
            self.requests.submit(request)
        except ServiceError as exc:
            self.reject(gateway_id, request.request_id, exc)

    async def resume(self, gateway_id: str, request: Request, num_received: int) -> None:
        """Catches a reconnected gateway up on a request (the tokens it has not
        received), then lets it stream on; a request that never reached Redis starts
        here; one that had tokens and is not in Redis was lost."""
        request_id = request.request_id
        released = self.requests.reclaim(request_id, gateway_id)
        if released is not None:
            missing = tuple(released[num_received:])
            self.send(gateway_id, RequestEvent(request_id, missing, num_received))
            return
        finished = await self.requests.load_finished(request_id)
        if finished is not None:
            missing = tuple(finished.output_token_ids[num_received:])
            reason = finished.stop_reason
            fields = _error_fields(finished.error)
            self.send(
                gateway_id,
                RequestEvent(request_id, missing, num_received, stop_reason=reason, **fields),
            )
        elif num_received == 0:
            self.submit(gateway_id, request)
        else:
            message = f"request {request_id} was lost with its scheduler"
            self.reject(gateway_id, request_id, Unavailable(message))

    def expire_later(self, gateway_id: str) -> None:
        """Aborts the gateway's requests unless it reconnects within the grace period."""
        self._cancel_expiry(gateway_id)
        self._expiries[gateway_id] = asyncio.get_running_loop().call_later(
            self.grace_s, self._expire, gateway_id
        )

    def _cancel_expiry(self, gateway_id: str) -> None:
        handle = self._expiries.pop(gateway_id, None)
        if handle is not None:
            handle.cancel()

    def _expire(self, gateway_id: str) -> None:
        self._expiries.pop(gateway_id, None)
        if not self.is_open(gateway_id):
            log.warning("gateway %s did not come back: aborting its requests", gateway_id)
            self.requests.abort_session(gateway_id)


def batch_by_session(
    updates: Iterable[RequestUpdate], ended: Iterable[Request] = ()
) -> dict[str, SessionEvents]:
    """An iteration's tokens and ends, per gateway. A request recovered by a new leader
    and not resumed yet is left out: its gateway gets them with the resume catch-up."""
    by_session: dict[str, SessionEvents] = defaultdict(SessionEvents)
    for update in updates:  # hot: every running request
        request = update.request
        if request.awaiting_resume:
            continue
        batch = by_session[request.session_id]
        if update.stop_reason is None and not update.logprobs and len(update.token_ids) == 1:
            batch.token_request_ids.append(request.request_id)
            batch.token_ids.append(update.token_ids[0])
            batch.token_indexes.append(update.first_index)
            continue
        batch.events.append(
            RequestEvent(
                request_id=request.request_id,
                token_ids=update.token_ids,
                first_token_index=update.first_index,
                logprobs=update.logprobs,
                stop_reason=update.stop_reason,
                **_error_fields(request.error),
            )
        )
    for request in ended:
        if request.awaiting_resume:
            continue
        assert request.stop_reason is not None
        by_session[request.session_id].events.append(
            RequestEvent(
                request.request_id, stop_reason=request.stop_reason, **_error_fields(request.error)
            )
        )
    return by_session


def _error_fields(error: ServiceError | None) -> dict[str, str]:
    """A failed request's error, as a RequestEvent carries it."""
    if error is None:
        return {}
    return {"error_code": error.code.name, "error_message": str(error)}
