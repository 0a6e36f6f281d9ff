"""The prefix cache through the whole system (on by default): greedy outputs equal
Hugging Face `generate` for requests that reuse a cached prefix ending inside their
prompt, exact repeats, the next turn of a conversation (its cached part includes the
tokens generated in the turn before), requests that hit after part of their prefix was
evicted, preempted ones, and requests in flight on shared prefixes when the worker and
then the leader are killed; the scheduler counts the hits; salts and
`--no-prefix-caching` keep requests apart; two replicas route by cached prefix."""

from __future__ import annotations

import os
import signal
import threading

import grpc

from sarathi_serve.protocol import generate_pb2 as gpb
from sarathi_serve.protocol import generate_pb2_grpc as gpb_grpc
from tests.e2e.oracle import PARAGRAPH, wait_until

MAX_TOKENS = 12
SYSTEM = (
    "You are a careful assistant. Answer in one short sentence, cite no sources, and say "
    "so when you do not know. " + PARAGRAPH
)
QUESTIONS = ["What changed?", "Who read books?", "Why did it matter?", "When was it?"]


def generate_ids(addr: str, ids: list[int], cache_salt: str = "", max_tokens=MAX_TOKENS):
    request = gpb.GenerateRequest(
        prompt_token_ids=gpb.TokenIds(ids=ids),
        sampling=gpb.SamplingOptions(max_tokens=max_tokens, temperature=0.0),
        cache_salt=cache_salt,
    )
    with grpc.insecure_channel(addr) as channel:
        stream = gpb_grpc.GenerationStub(channel).Generate(request, timeout=300)
        return [t for r in stream for t in r.token_ids]


def hits(system) -> list[int]:
    return [r.prefix_cache_hits for r in system.stats().replicas]


def test_cached_prefixes_give_the_tokens_of_a_full_compute(system_factory, tokenizer, reference):
    system = system_factory("--token-budget", "32")
    system_ids = tokenizer.encode(SYSTEM)
    assert len(system_ids) > 32, "the shared prefix must span chunks"
    prompts = [system_ids + tokenizer.encode(q) for q in QUESTIONS]
    for ids in prompts:  # one after another: each finds the system prompt cached
        assert generate_ids(system.gateway_addr, ids) == reference(ids)
    first_hits = hits(system)[0]
    assert first_hits >= 3 * (len(system_ids) // 16) * 16, "the system prompt was not reused"
    # an exact repeat: all but its last block comes from the cache
    assert generate_ids(system.gateway_addr, prompts[0]) == reference(prompts[0])
    # the next turn resends the conversation: its cached part includes generated tokens
    answer = reference(prompts[1])
    turn = prompts[1] + answer + tokenizer.encode(" And then?")
    before = hits(system)[0]
    assert generate_ids(system.gateway_addr, turn) == reference(turn)
    assert hits(system)[0] - before > len(prompts[1]) + 16 - 32, "the answer was not reused"
    stats = system.stats().replicas[0]
    assert stats.prefix_cache_queries > stats.prefix_cache_hits > 0
    assert stats.num_cached_kv_blocks > 0


def test_eviction_and_preemption_with_a_small_cache(system_factory, tokenizer, reference):
    """16 blocks of 16 tokens: shared prefixes are evicted and requests preempted."""
    blocks_bytes = 16 * 16 * 46080 + 4096
    system = system_factory("--token-budget", "32", "--kv-cache-gb", repr(blocks_bytes / 2**30))
    system_ids = tokenizer.encode(SYSTEM)[:90]
    prompts = [system_ids + tokenizer.encode(q) for q in QUESTIONS]
    prompts += [tokenizer.encode(PARAGRAPH * 2 + "In short,")]  # evicts the system prompt
    prompts += [prompts[0], prompts[2]]  # hit again whatever is left of it

    outputs: dict[int, list[int]] = {}

    def one(i: int) -> None:
        outputs[i] = generate_ids(system.gateway_addr, prompts[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, ids in enumerate(prompts):
        assert outputs[i] == reference(ids), f"prompt {i}"
    stats = system.stats()
    assert stats.num_free_kv_blocks == 16, "a block is still referenced"
    assert stats.replicas[0].prefix_cache_hits > 0


def test_salts_and_no_prefix_caching_keep_requests_apart(system_factory, tokenizer, reference):
    ids = tokenizer.encode(SYSTEM + " Hello?")
    system = system_factory()
    assert generate_ids(system.gateway_addr, ids, cache_salt="tenant-a") == reference(ids)
    assert generate_ids(system.gateway_addr, ids, cache_salt="tenant-b") == reference(ids)
    assert hits(system) == [0], "another salt's blocks were reused"
    assert generate_ids(system.gateway_addr, ids, cache_salt="tenant-a") == reference(ids)
    assert hits(system)[0] > 0
    off = system_factory("--no-prefix-caching")
    for _ in range(2):
        assert generate_ids(off.gateway_addr, ids) == reference(ids)
    assert hits(off) == [0]
    assert off.stats().replicas[0].num_cached_kv_blocks == 0


def test_two_replicas_route_by_cached_prefix(system_factory, tokenizer, reference):
    system = system_factory("--workers", "2")
    system_ids = tokenizer.encode(SYSTEM)
    first = system_ids + tokenizer.encode(QUESTIONS[0])
    assert generate_ids(system.gateway_addr, first) == reference(first)
    home = [i for i, r in enumerate(system.stats().replicas) if r.prefix_cache_queries]
    assert len(home) == 1
    for q in QUESTIONS[1:]:
        ids = system_ids + tokenizer.encode(q)
        assert generate_ids(system.gateway_addr, ids) == reference(ids)
    replicas = system.stats().replicas
    assert replicas[home[0]].prefix_cache_hits >= 3 * (len(system_ids) // 16) * 16
    assert replicas[1 - home[0]].prefix_cache_queries == 0, "a request left the prefix's replica"
    assert "not cached" in system.stats().routing_score


def test_two_replicas_still_balance_requests_that_share_nothing(system_factory, tokenizer):
    system = system_factory("--workers", "2")
    prompts = [tokenizer.encode(f"Story number {i}: once upon a time") for i in range(6)]
    threads = [
        threading.Thread(target=generate_ids, args=(system.gateway_addr, ids, "", 48))
        for ids in prompts
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queries = [r.prefix_cache_queries for r in system.stats().replicas]
    assert all(q > 0 for q in queries), f"one replica took everything: {queries}"


def test_kills_with_shared_prefixes_in_flight_give_exact_tokens(
    system_factory, tokenizer, reference
):
    """kill -9 of the worker, then of the leader, while requests that hit one cached
    system prompt stream: each stream still ends with exactly the reference tokens,
    and requests sent after each kill (a restarted worker's cache is cold, a new
    leader's too) reuse no KV that is gone."""
    system = system_factory("--token-budget", "32", "--schedulers", "2")
    system_ids = tokenizer.encode(SYSTEM)
    prompts = [system_ids + tokenizer.encode(f"Question {i}: {q}")
               for i, q in enumerate(QUESTIONS * 2)]  # fmt: skip
    assert generate_ids(system.gateway_addr, prompts[0]) == reference(prompts[0])

    def kill_in_flight(pid: int, stats) -> None:
        outputs: dict[int, list[int] | Exception] = {}

        def one(i: int) -> None:
            try:
                outputs[i] = generate_ids(system.gateway_addr, prompts[i], max_tokens=24)
            except Exception as exc:  # reported below, with the request's index
                outputs[i] = exc

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        hits_before = sum(r.prefix_cache_hits for r in stats().replicas)
        for t in threads:
            t.start()
        wait_until(lambda: stats().num_running >= 3, "3 requests running")
        wait_until(lambda: sum(r.prefix_cache_hits for r in stats().replicas) > hits_before,
                   "requests in flight hit the cached system prompt")  # fmt: skip
        os.kill(pid, signal.SIGKILL)
        for t in threads:
            t.join(timeout=300)
        for i, ids in enumerate(prompts):
            assert outputs.get(i) == reference(ids, 24), f"request {i} after the kill"
        after = system_ids + tokenizer.encode(" One more question?")
        assert generate_ids(system.gateway_addr, after) == reference(after)

    kill_in_flight(system.record("worker").pid, system.stats)
    system.refresh()
    leader = next(r for r in system.schedulers if r.address == system.scheduler_addr)
    kill_in_flight(leader.pid, lambda: system.stats_at(leader.address))
    system.refresh()  # `up` restarted the killed leader: it may be the standby now, or lead
    new_leader = next(r for r in system.schedulers if r.address == system.scheduler_addr)
    assert new_leader.pid != leader.pid
    stats = system.stats()
    assert stats.epoch >= 2 and stats.num_running == 0 and stats.num_waiting == 0
