"""Faults we claim to survive, caused for real."""

import os
import signal
import threading
import time

import grpc
import redis

from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc
from sarathi_serve.scheduler.store import unpack_tokens
from tests.e2e.oracle import generate_concurrently, wait_until


def test_worker_killed_mid_stream_recomputes_and_finishes(system_factory, expected_outputs):
    """kill -9 of the worker: `up` restarts it, the scheduler re-prefills every
    running request (prompt + tokens so far) and each stream continues exactly."""
    system = system_factory("--token-budget", "64")
    worker_pid = system.record("worker").pid
    killed = []

    def on_start(i: int) -> None:
        if i == 6:  # several requests are decoding by now
            wait_until(lambda: system.stats().num_running >= 3, "3 requests running")
            killed.append(system.stats().num_running)  # read before the kill, not after
            os.kill(worker_pid, signal.SIGKILL)

    # 20 tokens take the worker about a second: requests released 50 ms apart overlap
    outputs = generate_concurrently(system.gateway_addr, stagger_s=0.05, on_start=on_start)
    assert killed and killed[0] >= 3, "the worker was meant to die with requests in flight"
    assert outputs == expected_outputs, "a stream lost, repeated or changed tokens"
    stats = system.stats()
    assert stats.num_workers == 1 and stats.num_running == 0


def test_redis_killed_under_load_pauses_then_finishes(system_factory, expected_outputs):
    """kill -9 of Redis mid-stream: `up` restarts it (append-only file, fsync
    always); meanwhile the leader holds each iteration's tokens, so clients see
    a pause, then every stream completes with exactly its tokens."""
    system = system_factory("--token-budget", "64")
    redis_pid = system.record("redis").pid

    def on_start(i: int) -> None:
        if i == 5:
            wait_until(lambda: system.stats().num_running >= 3, "3 requests running")
            os.kill(redis_pid, signal.SIGKILL)

    outputs = generate_concurrently(system.gateway_addr, stagger_s=0.05, on_start=on_start)
    assert outputs == expected_outputs
    system.refresh()
    assert system.record("redis").restarts == 1
    stats = system.stats()
    assert any(it.persist_ms > 100 for it in stats.iterations), "no iteration waited for Redis"
    assert stats.num_running == 0 and stats.epoch >= 1


def test_nothing_is_released_while_redis_cannot_store_it(system_factory):
    """Redis stops taking writes mid-stream (CLIENT PAUSE WRITE; reads go on): the client
    has never more tokens than Redis holds and the stream pauses; after the pause it ends
    with every token, the same as Redis's."""
    system = system_factory("--token-budget", "64")
    host, port = system.record("redis").address.rsplit(":", 1)
    store = redis.Redis(host=host, port=int(port))
    received: list[int] = []
    errors: list[Exception] = []
    request = gpb.GenerateRequest(
        request_id="held-by-redis",
        prompt="Tell me a story.",
        sampling=gpb.SamplingOptions(max_tokens=120, ignore_eos=True, temperature=0),
    )

    def stream() -> None:
        try:
            with grpc.insecure_channel(system.gateway_addr) as channel:
                for r in gpb_grpc.GenerationStub(channel).Generate(request, timeout=300):
                    received.extend(r.token_ids)
        except Exception as exc:
            errors.append(exc)

    def stored() -> list[int]:
        return unpack_tokens(store.get("sarathi:out:held-by-redis") or b"")

    reader = threading.Thread(target=stream)
    reader.start()
    try:
        wait_until(lambda: len(received) >= 5, "5 tokens streamed")
        store.execute_command("CLIENT", "PAUSE", "6000", "WRITE")
        time.sleep(1.0)  # the worker goes on; the scheduler's write waits
        held = len(received)
        assert 5 <= held < 120
        assert received == stored()[:held], "a token was released before Redis stored it"
        time.sleep(2.0)
        assert len(received) == held, "tokens were released while Redis took no writes"
    finally:
        store.execute_command("CLIENT", "UNPAUSE")
    reader.join(300)
    assert not errors and len(received) == 120, errors
    assert stored() == received
