"""Gateway sessions: one outbound queue of batched token events per gateway.

A session belongs to a gateway id, which is stable across reconnects. A request
recovered by a new leader is held (`awaiting_resume`) until its gateway resumes
it, so that the catch-up tokens go out before any new one, in order.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from sarathi_serve.common.convert import logprobs_to_pb, stop_reason_to_pb
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.scheduler.core import RequestUpdate
from sarathi_serve.scheduler.request import Request

Outbox = asyncio.Queue[pb.SessionEvents | None]  # None ends the stream's writer


@dataclass(slots=True)
class _Batch:
    """One gateway's share of an iteration, as plain lists until it is sent (building
    the packed fields from lists is ten times cheaper than a message per request)."""

    request_ids: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    token_indexes: list[int] = field(default_factory=list)
    events: list[pb.RequestEvent] = field(default_factory=list)

    def to_pb(self) -> pb.SessionEvents:
        return pb.SessionEvents(
            events=self.events,
            token_request_ids=self.request_ids,
            token_ids=self.token_ids,
            token_indexes=self.token_indexes,
        )


class SessionHub:
    def __init__(self) -> None:
        self._queues: dict[str, Outbox] = {}

    def open(self, gateway_id: str) -> Outbox:
        """A new stream of this gateway; an older one of the same gateway is ended."""
        old = self._queues.get(gateway_id)
        if old is not None:
            old.put_nowait(None)
        queue: Outbox = asyncio.Queue()
        self._queues[gateway_id] = queue
        return queue

    def close(self, gateway_id: str, queue: Outbox) -> bool:
        """Forgets the stream; False when a newer stream of the gateway replaced it."""
        if self._queues.get(gateway_id) is not queue:
            return False
        del self._queues[gateway_id]
        return True

    def is_open(self, gateway_id: str) -> bool:
        return gateway_id in self._queues

    def dispatch(self, updates: Iterable[RequestUpdate], ended: Iterable[Request] = ()) -> None:
        """Sends one SessionEvents message per gateway for this iteration: plain tokens
        packed, the rest as events."""
        by_session: dict[str, _Batch] = defaultdict(_Batch)
        for update in updates:
            request = update.request
            if request.awaiting_resume:
                continue  # its gateway gets these tokens with the resume catch-up
            batch = by_session[request.session_id]
            if update.stop_reason is None and not update.logprobs and len(update.token_ids) == 1:
                batch.request_ids.append(request.request_id)
                batch.token_ids.append(update.token_ids[0])
                batch.token_indexes.append(update.first_index)
                continue
            event = pb.RequestEvent(
                request_id=request.request_id,
                token_ids=update.token_ids,
                first_token_index=update.first_index,
            )
            if update.logprobs:
                event.logprobs.extend(logprobs_to_pb(lp) for lp in update.logprobs)
            if update.stop_reason is not None:
                event.stop_reason = stop_reason_to_pb(update.stop_reason)
            batch.events.append(event)
        for request in ended:
            if request.awaiting_resume:
                continue
            assert request.stop_reason is not None
            by_session[request.session_id].events.append(
                pb.RequestEvent(
                    request_id=request.request_id,
                    stop_reason=stop_reason_to_pb(request.stop_reason),
                )
            )
        for session_id, batch in by_session.items():
            self._put(session_id, batch.to_pb())

    def send(self, gateway_id: str, events: list[pb.RequestEvent]) -> None:
        if events:
            self._put(gateway_id, pb.SessionEvents(events=events))

    def _put(self, gateway_id: str, message: pb.SessionEvents) -> None:
        queue = self._queues.get(gateway_id)
        if queue is not None:  # else the gateway is gone; a resume catches it up
            queue.put_nowait(message)

    def reject(self, gateway_id: str, request_id: str, code: str, message: str) -> None:
        event = pb.RequestEvent(
            request_id=request_id,
            stop_reason=pb.STOP_REASON_ERROR,
            error_code=code,
            error_message=message,
        )
        self.send(gateway_id, [event])
