"""Faults we claim to survive, caused for real."""

import os
import signal
import time

from tests.e2e.oracle import generate_concurrently


def test_worker_killed_mid_stream_recomputes_and_finishes(system_factory, expected_outputs):
    """kill -9 of the worker: `up` restarts it, the scheduler re-prefills every
    running request (prompt + tokens so far) and each stream continues exactly."""
    system = system_factory("--token-budget", "64")
    worker_pid = system.record("worker").pid
    killed = []

    def on_start(i: int) -> None:
        if i == 6:  # several requests are decoding by now
            deadline = time.monotonic() + 30
            while system.stats().num_running < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(worker_pid, signal.SIGKILL)
            killed.append(system.stats().num_running)

    outputs = generate_concurrently(system.gateway_addr, stagger_s=0.2, on_start=on_start)
    assert killed and killed[0] >= 1, "the worker was meant to die with requests in flight"
    assert outputs == expected_outputs, "a stream lost, repeated or changed tokens"
    stats = system.stats()
    assert stats.num_workers == 1 and stats.num_running == 0
