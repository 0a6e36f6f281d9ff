"""Hostile input straight to the internal ports, while clients stream: refused, and
nobody else notices."""

from __future__ import annotations

import threading
import time

import grpc
import httpx2 as httpx
import pytest

from sarathi_serve.common.auth import InternalToken
from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc
from tests.e2e.oracle import PROMPTS

VOCAB = 49152  # SmolLM2's


class Streams:
    """Greedy streams through the gateway, each timing the longest pause between two
    of its responses."""

    def __init__(self, addr: str, num_streams: int, max_tokens: int):
        self.pauses: list[float] = []
        self.tokens: list[int] = []
        self.errors: list[Exception] = []
        self._threads = [
            threading.Thread(target=self._one, args=(addr, PROMPTS[i], max_tokens))
            for i in range(num_streams)
        ]
        self.started = threading.Barrier(num_streams + 1)
        for t in self._threads:
            t.start()
        self.started.wait()

    def _one(self, addr: str, prompt: str, max_tokens: int) -> None:
        request = gpb.GenerateRequest(
            prompt=prompt,
            sampling=gpb.SamplingOptions(max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
        )
        longest, count, last = 0.0, 0, None
        try:
            with grpc.insecure_channel(addr) as channel:
                for response in gpb_grpc.GenerationStub(channel).Generate(request, timeout=300):
                    now = time.monotonic()
                    if last is None:
                        self.started.wait()  # every stream has its first token
                    else:
                        longest = max(longest, now - last)
                    last = now
                    count += len(response.token_ids)
        except Exception as exc:  # reported by the test
            self.errors.append(exc)
        self.pauses.append(longest)
        self.tokens.append(count)

    def join(self) -> None:
        for t in self._threads:
            t.join()


def submit(request_id: str, prompt_token_ids: list[int], **sampling) -> pb.SessionRequest:
    params = pb.SamplingParams(temperature=0.0, top_p=1.0, max_tokens=4, **sampling)
    return pb.SessionRequest(
        submit=pb.Submit(request_id=request_id, prompt_token_ids=prompt_token_ids, sampling=params)
    )


def session(addr: str, messages: list[pb.SessionRequest], metadata=()) -> list[pb.RequestEvent]:
    """Sends a gateway's hello and `messages` on the scheduler's Session stream; returns
    the events it answers before the stream ends."""
    hello = pb.SessionRequest(hello=pb.SessionHello(gateway_id="intruder"))
    with grpc.insecure_channel(addr) as channel:
        call = pb_grpc.SchedulerStub(channel).Session(
            iter([hello, *messages]), metadata=metadata, timeout=30
        )
        return [event for batch in call for event in batch.events]


@pytest.fixture(scope="module")
def system(system_factory):
    return system_factory("--token-budget", "64")


def test_poison_on_the_scheduler_port_is_refused_and_stalls_no_stream(system):
    addr, token = system.scheduler_addr, system.token
    assert token.enabled, "up makes an internal token for each run"
    streams = Streams(system.gateway_addr, num_streams=4, max_tokens=48)

    poison = [
        submit("oov", [1, 2, VOCAB]),
        submit("oov-stop", [1, 2, 3], stop_token_ids=[2**32 - 1]),
        submit("too-long", [1] * 9000),  # the model's context is 8192
        submit("x" * 100_000, [1, 2, 3]),
        submit("top-k", [1, 2, 3], top_k=10**9),
        submit("nan", [1, 2, 3], repetition_penalty=float("nan")),
    ]
    for metadata in ((), InternalToken("not-the-token").metadata):
        with pytest.raises(grpc.RpcError) as refused:
            session(addr, poison, metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as refused, grpc.insecure_channel(addr) as channel:
            pb_grpc.SchedulerStub(channel).GetStats(
                pb.GetStatsRequest(), timeout=10, metadata=metadata
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    events = session(addr, poison * 5, token.metadata)
    streams.join()

    assert len(events) == len(poison) * 5
    assert {e.error_code for e in events} == {"INVALID_ARGUMENT"}
    messages = {e.request_id[:20]: e.error_message for e in events}
    assert "outside the vocabulary" in messages["oov"] and "outside" in messages["oov-stop"]
    assert "context is 8192" in messages["too-long"] and "top_k" in messages["top-k"]
    assert "at most 256 characters" in messages["x" * 20]
    assert "repetition_penalty" in messages["nan"]
    assert not streams.errors and streams.tokens == [48] * 4
    assert max(streams.pauses) < 1.0, f"a stream paused {max(streams.pauses):.2f}s"
    assert system.stats().num_running == 0  # nothing of the intruder's runs


def test_huge_prompts_are_refused_without_stalling_other_streams(system):
    """A 3.9 MiB prompt (under the 4 MiB body limit) is refused before it is tokenized;
    one of 1 M characters, which might fit, is tokenized off the event loop and refused
    for its length: the streams meanwhile never pause for long."""
    streams = Streams(system.gateway_addr, num_streams=4, max_tokens=48)
    url = f"{system.base_url}/completions"
    huge = "All work and no play makes Jack a dull boy. " * 90_000  # 3.96 M characters
    for prompt in (huge[:3_900_000], huge[:1_000_000]):
        started = time.monotonic()
        response = httpx.post(url, json={"prompt": prompt, "max_tokens": 4}, timeout=60)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "prompt", response.text
        assert time.monotonic() - started < 30
    chat = {"messages": [{"role": "user", "content": huge[:3_900_000]}], "max_tokens": 4}
    response = httpx.post(f"{system.base_url}/chat/completions", json=chat, timeout=60)
    assert response.status_code == 400 and "messages" in response.json()["error"]["message"]
    streams.join()
    assert not streams.errors and streams.tokens == [48] * 4
    assert max(streams.pauses) < 0.5, f"a stream paused {max(streams.pauses):.2f}s"
