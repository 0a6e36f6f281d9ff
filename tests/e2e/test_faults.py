"""Faults we claim to survive, caused for real."""

import os
import signal

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

    outputs = generate_concurrently(system.gateway_addr, stagger_s=0.2, on_start=on_start)
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

    outputs = generate_concurrently(system.gateway_addr, stagger_s=0.2, on_start=on_start)
    assert outputs == expected_outputs
    system.refresh()
    assert system.record("redis").restarts == 1
    stats = system.stats()
    assert any(it.persist_ms > 100 for it in stats.iterations), "no iteration waited for Redis"
    assert stats.num_running == 0 and stats.epoch >= 1
