"""Scheduler high availability: kill -9 of the leader while 16 greedy requests stream."""

import os
import signal
import threading
import time

from sarathi_serve.cli import health
from tests.e2e.oracle import PROMPTS, generate_tokens


def test_leader_killed_mid_stream_every_client_gets_exactly_its_tokens(
    system_factory, expected_outputs
):
    system = system_factory("--token-budget", "64", "--schedulers", "2")
    leader_addr = system.scheduler_addr
    leader = next(r for r in system.schedulers if r.address == leader_addr)
    prompts = [*PROMPTS, *PROMPTS]  # 16 concurrent requests
    results: list[list[int] | Exception] = [[] for _ in prompts]

    def one(i: int) -> None:
        try:
            results[i] = generate_tokens(system.gateway_addr, prompts[i])
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
        time.sleep(0.05)
    deadline = time.monotonic() + 60
    while health.scheduler_stats(leader_addr).num_finished < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    in_flight = health.scheduler_stats(leader_addr)
    os.kill(leader.pid, signal.SIGKILL)
    for t in threads:
        t.join(timeout=300)
    assert in_flight.num_running + in_flight.num_waiting >= 4, (
        "the kill was meant to hit requests in flight"
    )
    for i, got in enumerate(results):
        assert not isinstance(got, Exception), f"request {i} failed: {got}"
        assert got == expected_outputs[i % len(PROMPTS)], (
            f"request {i}: tokens missing, repeated or changed"
        )
    system.refresh()  # `up` restarted the killed one: it may be the standby now, or lead
    new_leader = system.scheduler_addr
    assert next(r for r in system.schedulers if r.address == new_leader).pid != leader.pid
    stats = health.scheduler_stats(new_leader)
    assert stats.epoch >= 2 and stats.num_running == 0 and stats.num_waiting == 0
