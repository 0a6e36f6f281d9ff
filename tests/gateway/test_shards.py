"""Shard routing at the gateway: load balance without sharing, prefix affinity with it,
the affinity given up for a much busier shard, salts, readiness and the bounded record."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from sarathi_serve.gateway.router import VariantSpec
from sarathi_serve.gateway.shards import (
    AFFINITY_BLOCK_TOKENS,
    PrefixOwners,
    ShardSet,
    prefix_hashes,
    split_shards,
)


@dataclass
class FakeShard:
    """What ShardSet reads of a SchedulerClient."""

    ready: bool = True
    outstanding_tokens: int = 0
    num_workers: int | None = 1


def shard_set(n: int, **kw: object) -> tuple[ShardSet, list[FakeShard]]:
    shards = [FakeShard(**kw) for _ in range(n)]  # type: ignore[arg-type]
    return ShardSet(shards), shards  # type: ignore[arg-type]


def send(shards: ShardSet, fakes: list[FakeShard], prompt: list[int], max_tokens: int) -> int:
    i = shards.pick(prompt)
    fakes[i].outstanding_tokens += len(prompt) + max_tokens
    return i


def test_split_shards_reads_leaders_and_standbys_per_shard():
    assert split_shards("a:1, b:1 ; c:1;") == [["a:1", "b:1"], ["c:1"]]
    assert VariantSpec("v", 1.0, "a:1,b:1").shards == [["a:1", "b:1"]]
    with pytest.raises(ValueError, match="scheduler_addr"):
        VariantSpec("v", 1.0, " ; ")


def test_traffic_without_shared_prefixes_is_balanced_by_outstanding_work():
    shards, fakes = shard_set(2)
    rng = random.Random(0)
    picks = []
    for _ in range(1000):
        prompt = [rng.randrange(1000, 30000) for _ in range(rng.randrange(8, 400))]
        picks.append(send(shards, fakes, prompt, rng.randrange(16, 128)))
        for fake in fakes:  # work drains as the shards compute it
            fake.outstanding_tokens = int(fake.outstanding_tokens * 0.9)
    assert abs(picks.count(0) - picks.count(1)) <= 100  # within 10 % of the requests


def test_a_shared_prefix_keeps_going_to_the_shard_that_was_sent_it():
    shards, fakes = shard_set(3)
    system = list(range(100, 100 + 20 * AFFINITY_BLOCK_TOKENS))  # 320 shared tokens
    first = send(shards, fakes, [*system, 7, 8, 9], 32)
    for turn in range(5):  # prefilled, decoding: the holder is busier by less than a prompt
        fakes[first].outstanding_tokens -= len(system)
        assert send(shards, fakes, system + [turn] * 5, 32) == first
    assert (
        fakes[first].outstanding_tokens
        > 0
        == sum(f.outstanding_tokens for i, f in enumerate(fakes) if i != first)
    )


def test_a_much_busier_holder_loses_to_an_idle_shard():
    shards, fakes = shard_set(2)
    system = list(range(100, 100 + 10 * AFFINITY_BLOCK_TOKENS))
    first = send(shards, fakes, [*system, 1], 16)
    fakes[first].outstanding_tokens = 10 * len(system)
    assert shards.pick([*system, 2]) != first


def test_work_counts_per_worker_of_a_shard():
    shards, fakes = shard_set(2)
    fakes[0].outstanding_tokens, fakes[0].num_workers = 3000, 4  # 750 per worker
    fakes[1].outstanding_tokens, fakes[1].num_workers = 1000, 1
    assert shards.pick(list(range(50))) == 0


def test_a_different_cache_salt_shares_nothing():
    assert prefix_hashes(list(range(64)), "a") != prefix_hashes(list(range(64)), "b")
    assert len(prefix_hashes(list(range(33)), "")) == 2  # the last token is never a prefix
    assert len(prefix_hashes(list(range(32)), "")) == 1


def test_a_shard_that_is_not_ready_gets_nothing_while_another_is():
    shards, fakes = shard_set(2)
    fakes[0].ready = False
    assert {shards.pick([i] * 40) for i in range(20)} == {1}
    fakes[1].ready = False  # none is: every shard is a candidate (its client waits)
    assert shards.pick([1, 2, 3]) == 0


def test_the_record_of_prefixes_is_bounded_least_recently_used_first():
    owners = PrefixOwners(capacity=3)
    old, new = prefix_hashes(list(range(48)), ""), prefix_hashes(list(range(500, 548)), "")
    owners.record(old, 0)
    owners.record(new, 1)
    assert len(owners) == 3
    assert owners.seen_tokens(new, 2) == [0, 2 * AFFINITY_BLOCK_TOKENS]
    assert owners.seen_tokens(old, 2) == [0, 0], "its first block was forgotten first"


def test_an_idle_system_takes_turns_between_shards():
    shards, _ = shard_set(3)
    assert [shards.pick([i + 1000] * 5) for i in range(6)] == [0, 1, 2, 0, 1, 2]
