"""Why a request ended: one enum for the scheduler, Redis, the wire and the gateway.

Its values are the names stored in Redis (`{p}:req:{id}` `stop_reason`); protobuf's
`StopReason` is converted in `common/convert.py`; each public edge maps it to its own
finish reason (`finish_reason` below for the OpenAI names, the gRPC edge from those).
"""

from __future__ import annotations

import enum


class StopReason(enum.Enum):
    EOS = "eos"  # the end-of-sequence token, or one of the request's stop tokens
    LENGTH = "length"  # max_tokens
    CONTEXT = "context"  # the model's context is full
    ABORTED = "aborted"  # the client went away, or an abort
    ERROR = "error"  # the request failed (the event carries the error)

    @property
    def finish_reason(self) -> str:
        """OpenAI's finish reason: stop, length or abort (an error has none: it raises)."""
        return _FINISH_REASONS[self]


_FINISH_REASONS = {
    StopReason.EOS: "stop",
    StopReason.LENGTH: "length",
    StopReason.CONTEXT: "length",
    StopReason.ABORTED: "abort",
    StopReason.ERROR: "error",
}
