"""What the scheduler tells a gateway on its Session stream, as plain data (the
protobuf `SessionEvents` is made from it at the stream's ends, `common.convert`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sarathi_serve.common.step import TokenLogprobs
from sarathi_serve.common.stop_reason import StopReason


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """Tokens of one request that are not a lone plain token, or its end, or an error."""

    request_id: str
    token_ids: tuple[int, ...] = ()
    first_token_index: int = 0
    logprobs: tuple[TokenLogprobs, ...] = ()
    stop_reason: StopReason | None = None
    error_code: str = ""  # a grpc.StatusCode name, with stop_reason ERROR
    error_message: str = ""


@dataclass(slots=True)
class SessionEvents:
    """One gateway's share of an iteration. A plain token (one, no logprobs, no end) of
    each request goes in the three parallel lists (packed on the wire: building them is
    ten times cheaper than a message per request); anything else is an event."""

    events: list[RequestEvent] = field(default_factory=list)
    token_request_ids: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    token_indexes: list[int] = field(default_factory=list)
    num_workers: int | None = None  # set when the number of attached workers changes
