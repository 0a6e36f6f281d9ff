"""The gateway's reading of SessionEvents: packed tokens and events, deduplicated by index."""

from __future__ import annotations

import asyncio

from sarathi_serve.common.errors import ResourceExhausted
from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.common.stop_reason import StopReason
from sarathi_serve.gateway.scheduler_client import SchedulerClient, TokenEvent, _InFlight
from sarathi_serve.protocol import scheduler_pb2 as pb


def _client(*request_ids: str) -> tuple[SchedulerClient, dict[str, asyncio.Queue[TokenEvent]]]:
    client = SchedulerClient(["127.0.0.1:1"], "gw")
    queues = {}
    for rid in request_ids:
        entry = _InFlight(pb.Submit(request_id=rid), asyncio.Queue())
        client._inflight[rid] = entry
        queues[rid] = entry.events
    return client, queues


def _drain(queue: asyncio.Queue[TokenEvent]) -> list[TokenEvent]:
    events = []
    while not queue.empty():
        events.append(queue.get_nowait())
    return events


def test_packed_tokens_and_events_reach_their_requests():
    client, queues = _client("a", "b", "c")
    client._dispatch(
        pb.SessionEvents(
            token_request_ids=["a", "b", "unknown"],
            token_ids=[11, 21, 99],
            token_indexes=[0, 0, 0],
            events=[
                pb.RequestEvent(
                    request_id="c",
                    token_ids=[31, 32],
                    first_token_index=0,
                    logprobs=[pb.TokenLogprobs(logprob=-0.5), pb.TokenLogprobs(logprob=-1.0)],
                    stop_reason=pb.STOP_REASON_LENGTH,
                )
            ],
        )
    )
    assert _drain(queues["a"]) == [TokenEvent([11])]
    assert _drain(queues["b"]) == [TokenEvent([21])]
    (c,) = _drain(queues["c"])
    assert c.token_ids == [31, 32] and c.stop is StopReason.LENGTH
    assert [lp.logprob for lp in c.logprobs] == [-0.5, -1.0]


def test_tokens_a_client_already_has_are_dropped_after_a_failover():
    client, queues = _client("a", "b")
    client._dispatch(
        pb.SessionEvents(token_request_ids=["a", "b"], token_ids=[1, 1], token_indexes=[0, 0])
    )
    client._dispatch(pb.SessionEvents(token_request_ids=["a"], token_ids=[2], token_indexes=[1]))
    _drain(queues["a"]), _drain(queues["b"])
    # the new leader recomputed them: a catch-up event from index 0, a packed repeat
    client._dispatch(
        pb.SessionEvents(
            token_request_ids=["b"],
            token_ids=[1],
            token_indexes=[0],
            events=[pb.RequestEvent(request_id="a", token_ids=[1, 2, 3], first_token_index=0)],
        )
    )
    assert _drain(queues["a"]) == [TokenEvent([3])]
    assert _drain(queues["b"]) == []
    client._dispatch(
        pb.SessionEvents(
            events=[
                pb.RequestEvent(
                    request_id="b",
                    token_ids=[1],
                    first_token_index=0,
                    stop_reason=pb.STOP_REASON_EOS,
                )
            ]
        )
    )
    assert _drain(queues["b"]) == [TokenEvent([], stop=StopReason.EOS)]  # the end is never dropped


def test_an_error_event_carries_the_error():
    client, queues = _client("a")
    client._dispatch(
        pb.SessionEvents(
            events=[
                pb.RequestEvent(
                    request_id="a",
                    stop_reason=pb.STOP_REASON_ERROR,
                    error_code="RESOURCE_EXHAUSTED",
                    error_message="waiting queue is full",
                )
            ]
        )
    )
    (event,) = _drain(queues["a"])
    assert isinstance(event.error, ResourceExhausted)
    assert str(event.error) == "waiting queue is full"


def test_outstanding_tokens_follow_each_request_from_submit_to_release():
    """Shard routing's load: prompt + max_tokens until the first token, then the
    tokens still to come, none once stopped; released or aborted requests leave it."""
    client = SchedulerClient(["127.0.0.1:1"], "gw")
    client._connected.set()  # as if a session were open (what is sent is not read here)

    async def submit_both() -> None:
        for rid, prompt in (("a", [1] * 10), ("b", [2] * 30)):
            await client.submit(rid, prompt, SamplingParams(max_tokens=5))

    asyncio.run(submit_both())
    assert client.outstanding_tokens == 15 + 35
    client._dispatch(pb.SessionEvents(token_request_ids=["a"], token_ids=[7], token_indexes=[0]))
    assert client.outstanding_tokens == 4 + 35
    client._dispatch(pb.SessionEvents(token_request_ids=["a"], token_ids=[7], token_indexes=[0]))
    assert client.outstanding_tokens == 4 + 35, "a token it already has changes nothing"
    stop = pb.RequestEvent(
        request_id="a", token_ids=[8], first_token_index=1, stop_reason=pb.STOP_REASON_EOS
    )
    client._dispatch(pb.SessionEvents(events=[stop]))
    assert client.outstanding_tokens == 35
    client.release("a")
    client.abort("b")
    assert client.outstanding_tokens == 0 and not client._inflight
