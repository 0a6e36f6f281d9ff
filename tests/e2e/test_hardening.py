"""Hostile input straight to the internal ports, while clients stream: refused, and
nobody else notices."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time

import grpc
import httpx2 as httpx
import pytest

from sarathi_serve.common import probes
from sarathi_serve.common.auth import InternalToken
from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc
from tests.e2e.oracle import PROMPTS, wait_until

VOCAB = 49152  # SmolLM2's
GENERATION = gpb.DESCRIPTOR.services_by_name["Generation"].full_name


class Streams:
    """Greedy streams through the gateway, one thread each, each timing the longest pause
    between two of its responses once every stream has its first token."""

    def __init__(self, addr: str, prompts: list[str], max_tokens: int, ignore_eos: bool = True):
        self.pauses = [0.0] * len(prompts)
        self.outputs: list[list[int]] = [[] for _ in prompts]
        self.errors: list[Exception] = []
        self.started = threading.Barrier(len(prompts) + 1)
        self._threads = [
            threading.Thread(target=self._one, args=(i, addr, p, max_tokens, ignore_eos))
            for i, p in enumerate(prompts)
        ]
        for t in self._threads:
            t.start()
        self.started.wait(timeout=120)

    def _one(self, i: int, addr: str, prompt: str, max_tokens: int, ignore_eos: bool) -> None:
        sampling = gpb.SamplingOptions(
            max_tokens=max_tokens, temperature=0.0, ignore_eos=ignore_eos
        )
        request = gpb.GenerateRequest(prompt=prompt, sampling=sampling)
        last = None
        try:
            with grpc.insecure_channel(addr) as channel:
                for response in gpb_grpc.GenerationStub(channel).Generate(request, timeout=300):
                    now = time.monotonic()
                    if last is None:
                        self.started.wait(timeout=120)  # every stream has its first token
                        now = time.monotonic()
                    else:
                        self.pauses[i] = max(self.pauses[i], now - last)
                    last = now
                    self.outputs[i].extend(response.token_ids)
        except Exception as exc:  # reported by the test
            self.errors.append(exc)

    def join(self) -> None:
        for t in self._threads:
            t.join()
        assert not self.errors, self.errors


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
    streams = Streams(system.gateway_addr, PROMPTS[:4], max_tokens=48)

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
    assert [len(out) for out in streams.outputs] == [48] * 4
    assert max(streams.pauses) < 1.0, f"a stream paused {max(streams.pauses):.2f}s"
    assert system.stats().num_running == 0  # nothing of the intruder's runs


def test_huge_prompts_are_refused_without_stalling_other_streams(system):
    """A 3.9 MiB prompt (under the 4 MiB body limit) is refused before it is tokenized;
    one of 1 M characters, which might fit, is tokenized off the event loop and refused
    for its length: the streams meanwhile never pause for long."""
    streams = Streams(system.gateway_addr, PROMPTS[:4], max_tokens=48)
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
    assert [len(out) for out in streams.outputs] == [48] * 4
    assert max(streams.pauses) < 0.5, f"a stream paused {max(streams.pauses):.2f}s"


HANG_TOKENS = 48


@contextlib.contextmanager
def _stopped(pid: int):
    """SIGSTOP of `pid` until the block ends (then SIGCONT, if it still lives)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_a_stopped_worker_is_dropped_and_its_streams_finish_on_the_other(
    system_factory, tokenizer, reference
):
    """SIGSTOP of one of two workers while 8 streams run: the scheduler takes it for hung
    when its step outlives its allowance, and every stream finishes on the other worker
    with exactly the reference tokens, none pausing more than 15 s."""
    system = system_factory("--token-budget", "64", "--workers", "2")
    stopped = next(r for r in system.records if r.role == "worker")
    expected = [reference(tokenizer.encode(p), HANG_TOKENS) for p in PROMPTS]
    streams = Streams(system.gateway_addr, PROMPTS, HANG_TOKENS, ignore_eos=False)
    with _stopped(stopped.pid):
        stopped_at = time.monotonic()
        streams.join()
        assert time.monotonic() - stopped_at < 60  # all done while it was still stopped
    assert streams.outputs == expected, "a stream lost, repeated or changed tokens"
    assert max(streams.pauses) < 15, f"a stream paused {max(streams.pauses):.1f}s"
    logs = "".join(p.read_text() for p in (system.run_dir / "logs").glob("scheduler*.log"))
    assert "hangs: step" in logs, "the scheduler never took the stopped worker for hung"


def test_a_stopped_lone_worker_shows_in_health_and_up_restarts_it(
    system_factory, tokenizer, reference
):
    """SIGSTOP of the only worker while streams run: within 10 s the gateway's health says
    it cannot serve (HTTP /health 503, gRPC readiness NOT_SERVING); `up` kills the hung
    worker and starts a new one, and every stream ends with exactly its tokens."""
    system = system_factory("--token-budget", "64")
    worker = system.record("worker")
    expected = [reference(tokenizer.encode(p), HANG_TOKENS) for p in PROMPTS[:4]]
    health = f"{system.base_url.removesuffix('/v1')}/health"
    assert httpx.get(health, timeout=5).status_code == 200
    streams = Streams(system.gateway_addr, PROMPTS[:4], HANG_TOKENS, ignore_eos=False)
    with _stopped(worker.pid):
        stopped_at = time.monotonic()
        wait_until(lambda: httpx.get(health, timeout=5).status_code == 503, "health 503", 30)
        wait_until(
            lambda: probes.grpc_health(system.gateway_addr, service=GENERATION) == "NOT_SERVING",
            "gRPC readiness NOT_SERVING",
            30,
        )
        assert time.monotonic() - stopped_at < 10, "the hang showed in health too late"
        streams.join()  # after `up` restarted the worker
    assert streams.outputs == expected, "a stream lost, repeated or changed tokens"
    system.refresh()
    assert system.record("worker").restarts == 1 and system.record("worker").pid != worker.pid
    assert httpx.get(health, timeout=5).status_code == 200
    wait_until(
        lambda: probes.grpc_health(system.gateway_addr, service=GENERATION) == "SERVING",
        "gRPC readiness SERVING again",
        5,
    )


def _sse_stream(url: str, prompt: str, max_tokens: int, out: dict) -> None:
    """A streamed completion read raw: its finish reason, error and [DONE], if any."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    body["ignore_eos"] = True
    out.update(tokens=0, finish_reason=None, error=None, done=False, broken=None)
    try:
        with httpx.stream("POST", url, json=body, timeout=120) as response:
            out["status"] = response.status_code
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    out["done"] = True
                    continue
                chunk = json.loads(line[len("data: ") :])
                if "error" in chunk:
                    out["error"] = chunk["error"]
                    continue
                out["tokens"] += 1
                out["finish_reason"] = chunk["choices"][0]["finish_reason"] or out["finish_reason"]
    except httpx.HTTPError as exc:  # a body cut short (what curl reports as exit 18)
        out["broken"] = repr(exc)


def test_sigterm_drains_every_stream_to_an_end_and_no_traceback(system_factory):
    """SIGTERM to `up` with 8 streams in flight: the short ones finish within the drain,
    the long ones end with an explicit error event; every stream ends with [DONE] and a
    whole body, new requests meanwhile get 503, and no log holds a traceback."""
    system = system_factory("--token-budget", "64", "--drain-s", "6")
    url = f"{system.base_url}/completions"
    results = [{} for _ in range(8)]
    threads = [
        threading.Thread(
            target=_sse_stream, args=(url, PROMPTS[i], 12 if i % 2 else 4000, results[i])
        )
        for i in range(8)
    ]
    for t in threads:
        t.start()
    wait_until(lambda: sum(r.get("tokens", 0) > 0 for r in results) == 8, "8 streams started")
    system.process.send_signal(signal.SIGTERM)
    wait_until(
        lambda: (
            httpx.post(url, json={"prompt": "hi", "max_tokens": 2}, timeout=5).status_code == 503
        ),
        "new requests refused while draining",
        10,
    )
    for t in threads:
        t.join(120)
    assert system.process.wait(60) == 0
    for i, r in enumerate(results):
        assert r["status"] == 200 and r["broken"] is None, (i, r)
        assert r["done"], (i, r)
        if i % 2:  # 12 tokens: done within the drain
            assert r["finish_reason"] == "length" and r["error"] is None, (i, r)
        else:  # 4000 tokens: ended by the drain, explicitly
            assert r["error"]["code"] == "UNAVAILABLE", (i, r)
            assert "shut down before this request finished" in r["error"]["message"], (i, r)
    logs = {p.name: p.read_text() for p in (system.run_dir / "logs").glob("*.log")}
    logs["up"] = "".join(system.output)
    for name, text in logs.items():
        assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"
