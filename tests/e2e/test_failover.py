"""Scheduler high availability: kill -9 of the leader while 24 streams run.

16 greedy gRPC streams, 4 sampled gRPC streams without a seed (the scheduler
seeds them and keeps the seed in Redis) and 4 greedy OpenAI HTTP/SSE streams.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import redis

from tests.e2e.oracle import (
    PROMPTS,
    generate_tokens,
    stream_http_completion,
    wait_until,
)

SAMPLING = {"temperature": 0.9, "top_p": 0.95}


def test_leader_killed_mid_stream_every_client_gets_exactly_its_tokens(
    system_factory, expected_outputs, tokenizer
):
    system = system_factory("--token-budget", "64", "--schedulers", "2")
    leader_addr = system.scheduler_addr
    status = subprocess.run(
        [sys.executable, "-m", "sarathi_serve.cli.main", "status", "--json",
         "--run-dir", str(system.run_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    roles = {row["address"]: row["health"] for row in json.loads(status.stdout)
             if row["role"] == "scheduler"}  # fmt: skip
    assert roles == {r.address: "LEADER" if r.address == leader_addr else "STANDBY"
                     for r in system.schedulers}  # fmt: skip
    leader = next(r for r in system.schedulers if r.address == leader_addr)
    greedy = [*PROMPTS, *PROMPTS]  # 16 concurrent greedy gRPC requests
    sampled = PROMPTS[:4]
    over_http = PROMPTS[4:]
    results: dict[str, object] = {}

    def run(key: str, call) -> None:
        try:
            results[key] = call()
        except Exception as exc:
            results[key] = exc

    calls = [
        (f"greedy-{i}", lambda p=p: generate_tokens(system.gateway_addr, p))
        for i, p in enumerate(greedy)
    ]
    calls += [
        (
            f"sampled-{i}",
            lambda i=i, p=p: generate_tokens(
                system.gateway_addr, p, request_id=f"sampled-{i}", **SAMPLING
            ),
        )
        for i, p in enumerate(sampled)
    ]
    calls += [
        (f"http-{i}", lambda p=p: stream_http_completion(system.base_url, p))
        for i, p in enumerate(over_http)
    ]
    threads = [threading.Thread(target=run, args=call) for call in calls]
    for t in threads:
        t.start()
        time.sleep(0.05)
    wait_until(lambda: system.stats_at(leader_addr).num_finished >= 2, "2 requests finished")
    in_flight = system.stats_at(leader_addr)
    assert in_flight.num_running + in_flight.num_waiting >= 4, (
        "the kill was meant to hit requests in flight"
    )
    os.kill(leader.pid, signal.SIGKILL)
    for t in threads:
        t.join(timeout=300)
    errors = {k: v for k, v in results.items() if isinstance(v, Exception)}
    assert not errors and len(results) == len(calls), f"streams failed: {errors}"

    for i in range(len(greedy)):
        assert results[f"greedy-{i}"] == expected_outputs[i % len(PROMPTS)], (
            f"greedy request {i}: tokens missing, repeated or changed"
        )
    for i, prompt in enumerate(over_http):
        got = results[f"http-{i}"]
        want = expected_outputs[PROMPTS.index(prompt)]
        assert got.text == tokenizer.decode(want, skip_special_tokens=True), f"http stream {i}"
        assert got.finish_reason in ("length", "stop") and got.done, f"http stream {i} unfinished"

    system.refresh()  # `up` restarted the killed one: it may be the standby now, or lead
    new_leader = system.scheduler_addr
    assert next(r for r in system.schedulers if r.address == new_leader).pid != leader.pid
    stats = system.stats_at(new_leader)
    assert stats.epoch >= 2 and stats.num_running == 0 and stats.num_waiting == 0

    # A sampled stream survived the failover exactly: it equals what Redis stored once,
    # and a new request with the seed the scheduler gave it draws the same tokens.
    host, port = system.record("redis").address.rsplit(":", 1)
    store = redis.Redis(host=host, port=int(port))
    for i, prompt in enumerate(sampled):
        got = results[f"sampled-{i}"]
        seed = json.loads(store.hget(f"sarathi:req:sampled-{i}", "sampling"))["seed"]
        assert seed is not None, "the scheduler did not seed an unseeded sampled request"
        replay = generate_tokens(system.gateway_addr, prompt, seed=seed, **SAMPLING)
        assert got == replay, f"sampled request {i}: tokens changed across the failover"
    assert any(results[f"sampled-{i}"] != expected_outputs[i] for i in range(len(sampled))), (
        "the sampled requests were meant to sample, not decode greedily"
    )
