"""`up --shards 2 --schedulers 2 --null-model --null-step-ms 10`: two scheduler sets
(leader + standby, one null worker each, their own Redis state) behind one gateway.

Traffic without shared prefixes is spread over both shards; requests sharing a long
prefix stay on the shard that computed it (and hit its prefix cache); killing one
shard's leader mid-stream loses no token of any stream, and the other shard's
iterations go on meanwhile. Null workers answer `null_token(request id, index)`, so
every output is known exactly.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import threading
import time
import urllib.request

import pytest

from sarathi_serve.worker.null_runner import null_token
from tests.e2e.oracle import generate_tokens, wait_until
from tests.e2e.system import run_cli as cli

STEP_MS = 10


@pytest.fixture(scope="module")
def system(system_factory):
    return system_factory(
        "--shards", "2", "--schedulers", "2", "--null-model", "--null-step-ms", str(STEP_MS)
    )  # fmt: skip


def shard_requests(system) -> list[float]:
    """The gateway's count of requests sent to each shard."""
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{system.http_port}/metrics").read()
    found = dict(
        re.findall(rb'sarathi_shard_requests_total\{[^}]*shard="(\d)"[^}]*\} (\S+)', metrics)
    )
    return [float(found.get(str(i).encode(), 0)) for i in range(2)]


def leader(system, shard: str):
    system.refresh()
    for record in system.schedulers:
        if record.shard == shard:
            try:
                if system.stats_at(record.address).is_leader:
                    return record
            except Exception:  # the standby's or a dead one's answer
                continue
    return None


def prefix_cache_hits(system) -> list[int]:
    """Prompt tokens found in each shard's prefix cache so far."""
    replicas = [system.stats_at(leader(system, s).address).replicas for s in ("0", "1")]
    return [sum(r.prefix_cache_hits for r in shard) for shard in replicas]


def run_streams(system, prompts: dict[str, str], max_tokens: int) -> dict[str, list[int]]:
    results: dict[str, list[int] | Exception] = {}

    def one(request_id: str) -> None:
        try:
            results[request_id] = generate_tokens(
                system.gateway_addr, prompts[request_id], max_tokens, request_id=request_id
            )
        except Exception as exc:  # reported below
            results[request_id] = exc

    threads = [threading.Thread(target=one, args=(rid,)) for rid in prompts]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join()
    failed = {rid: r for rid, r in results.items() if isinstance(r, Exception)}
    assert not failed, failed
    return results  # type: ignore[return-value]


def assert_exact(results: dict[str, list[int]], max_tokens: int) -> None:
    for rid, tokens in results.items():
        assert tokens == [null_token(rid, i) for i in range(max_tokens)], rid


def random_prompts(tag: str, n: int, seed: int) -> dict[str, str]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    return {f"{tag}-{i}": " ".join(rng.choices(words, k=rng.randrange(4, 40))) for i in range(n)}


def test_traffic_without_shared_prefixes_uses_both_shards_evenly(system):
    before = shard_requests(system)
    results = run_streams(system, random_prompts("spread", 40, seed=1), max_tokens=16)
    assert_exact(results, 16)
    sent = [a - b for a, b in zip(shard_requests(system), before, strict=True)]
    assert sum(sent) == 40
    assert abs(sent[0] - sent[1]) <= 4, f"within 10 % of the requests: {sent}"
    finished = [system.stats_at(leader(system, s).address).num_finished for s in ("0", "1")]
    assert min(finished) > 0, finished


def test_requests_sharing_a_long_prefix_stay_on_the_shard_that_holds_it(system):
    system_prompt = " ".join(f"rule {i}: be precise and kind." for i in range(40))
    before, hits_before = shard_requests(system), prefix_cache_hits(system)
    for i in range(8):
        request_id = f"shared-{i}"
        tokens = generate_tokens(
            system.gateway_addr, f"{system_prompt} question {i}?", 4, request_id=request_id
        )
        assert tokens == [null_token(request_id, j) for j in range(4)]
    sent = [a - b for a, b in zip(shard_requests(system), before, strict=True)]
    assert sorted(sent) == [0, 8], sent
    holder = sent.index(8)
    hits = prefix_cache_hits(system)[holder] - hits_before[holder]
    assert hits >= 7 * 300, "the later requests found the prefix cached on their shard"


def test_status_and_admin_address_every_shard(system):
    run = ["--run-dir", str(system.run_dir)]
    status = cli("status", *run)
    assert status.returncode == 0 and "scheduler [shard 1]" in status.stdout, status.stdout
    stats = cli("admin", *run, "stats", "--last", "2")
    assert stats.returncode == 0, stats.stderr
    assert "[shard 0]" in stats.stdout and "[shard 1]" in stats.stdout
    swapped = cli("admin", *run, "set-policy", "vllm", "--token-budget", "128")
    assert swapped.returncode == 0 and swapped.stdout.count("policy vllm") == 2, swapped.stdout
    answers = json.loads(cli("admin", *run, "stats", "--json").stdout)
    assert [(a["shard"], a["stats"]["policy"]) for a in answers] == [("0", "vllm"), ("1", "vllm")]
    assert cli("admin", *run, "set-policy", "sarathi").returncode == 0
    unknown = cli("admin", *run, "--variant", "nope", "stats")
    assert unknown.returncode == 1 and "nope" in unknown.stderr


def test_killing_one_shards_leader_mid_stream_loses_no_token_anywhere(system):
    max_tokens = 300  # ~3 s of 10 ms steps
    prompts = random_prompts("failover", 16, seed=2)
    killed: list[int] = []

    def kill_shard_0() -> None:
        time.sleep(1.0)
        record = leader(system, "0")
        assert record is not None
        os.kill(record.pid, signal.SIGKILL)
        killed.append(record.pid)

    killer = threading.Thread(target=kill_shard_0)
    killer.start()
    other = leader(system, "1")
    results = run_streams(system, prompts, max_tokens)
    killer.join()
    assert killed
    assert_exact(results, max_tokens)
    # the other shard went on stepping through the failover: no pause in its iterations
    stats = system.stats_at(other.address, timeout=5.0, max_iterations=0)
    starts = sorted(it.start_time for it in stats.iterations)[-max_tokens:]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps and max(gaps) < 0.5, f"shard 1 paused {max(gaps):.2f}s"
    wait_until(lambda: leader(system, "0") is not None, "shard 0 leads again", 30)
