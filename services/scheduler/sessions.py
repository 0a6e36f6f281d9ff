"""Gateway sessions: one outbound queue of batched token events per gateway."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import Iterable

from sarathi_serve.common.convert import logprobs_to_pb
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.scheduler.core import RequestUpdate
from sarathi_serve.scheduler.request import Request, StopReason

_STOP_TO_PB = {
    StopReason.EOS: pb.STOP_REASON_EOS,
    StopReason.LENGTH: pb.STOP_REASON_LENGTH,
    StopReason.CONTEXT: pb.STOP_REASON_CONTEXT,
    StopReason.ABORTED: pb.STOP_REASON_ABORTED,
    StopReason.ERROR: pb.STOP_REASON_ERROR,
}


class SessionHub:
    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[pb.SessionEvents | None]] = {}
        self._ids = itertools.count(1)

    def open(self, gateway_id: str) -> tuple[str, asyncio.Queue[pb.SessionEvents | None]]:
        session_id = f"{gateway_id or 'gateway'}#{next(self._ids)}"
        queue: asyncio.Queue[pb.SessionEvents | None] = asyncio.Queue()
        self._queues[session_id] = queue
        return session_id, queue

    def close(self, session_id: str) -> None:
        self._queues.pop(session_id, None)

    def dispatch(self, updates: Iterable[RequestUpdate], ended: Iterable[Request] = ()) -> None:
        """Sends one SessionEvents message per gateway for this iteration."""
        by_session: dict[str, list[pb.RequestEvent]] = defaultdict(list)
        for update in updates:
            by_session[update.request.session_id].append(
                pb.RequestEvent(
                    request_id=update.request.request_id,
                    token_ids=update.token_ids,
                    logprobs=[logprobs_to_pb(lp) for lp in update.logprobs],
                    stop_reason=_STOP_TO_PB[update.stop_reason] if update.stop_reason else 0,
                )
            )
        for request in ended:
            assert request.stop_reason is not None
            by_session[request.session_id].append(
                pb.RequestEvent(
                    request_id=request.request_id, stop_reason=_STOP_TO_PB[request.stop_reason]
                )
            )
        for session_id, events in by_session.items():
            queue = self._queues.get(session_id)
            if queue is not None:
                queue.put_nowait(pb.SessionEvents(events=events))

    def reject(self, session_id: str, request_id: str, code: str, message: str) -> None:
        queue = self._queues.get(session_id)
        if queue is not None:
            event = pb.RequestEvent(
                request_id=request_id,
                stop_reason=pb.STOP_REASON_ERROR,
                error_code=code,
                error_message=message,
            )
            queue.put_nowait(pb.SessionEvents(events=[event]))
