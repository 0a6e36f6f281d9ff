"""Shards: several scheduler sets serving one variant, and the pick of one for a request.

A variant's `scheduler_addr` lists its shards separated by `;`, each a leader and its
standbys separated by `,` (`"s0a:50052,s0b:50052;s1a:50052,s1b:50052"`): one Session
per shard. Each shard has its own workers, Redis state and lease, so a shard that
fails over disturbs no other; its requests resume on its new leader.

A new request goes to the shard with the lowest SHARD_SCORE: the work this gateway has
in flight there per worker, plus the request's prompt tokens that shard has not seen
as a prefix. What a shard has seen is this gateway's own record of the prompts it
sent there (`PrefixOwners`, block hashes chained as the scheduler's are, salted by
the request's cache salt), so requests sharing a system prompt or a conversation
keep going where its KV is cached, unless that shard is busier by more than the
prompt. With several gateways each balances its own traffic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from sarathi_serve.common.block_hash import BlockHash, hash_block, salt_hash
from sarathi_serve.common.config import split_addrs
from sarathi_serve.common.errors import ServiceError
from sarathi_serve.gateway.scheduler_client import SchedulerClient

AFFINITY_BLOCK_TOKENS = 16  # the prefix granularity the gateway remembers
MAX_REMEMBERED_BLOCKS = 1 << 16  # per variant, least recently used forgotten first
UNSEEN_PROMPT_WEIGHT = 1.0  # a prompt token to compute counts as much as outstanding work
SHARD_SCORE = (
    "outstanding tokens this gateway has on the shard / its workers "
    f"+ {UNSEEN_PROMPT_WEIGHT:g} x the prompt tokens not sent to the shard as a prefix"
)


def split_shards(value: str) -> list[list[str]]:
    """`"a:1,b:1;c:1"` -> `[["a:1", "b:1"], ["c:1"]]`: each shard's leader and standbys."""
    return [addrs for part in value.split(";") if (addrs := split_addrs(part))]


def prefix_hashes(token_ids: Sequence[int], cache_salt: str) -> list[BlockHash]:
    """Chained hashes of the prompt's full blocks before its last token (which the
    scheduler always computes, so it is never part of a cached prefix)."""
    parent, hashes = salt_hash(cache_salt), []
    for start in range(0, len(token_ids) - AFFINITY_BLOCK_TOKENS, AFFINITY_BLOCK_TOKENS):
        parent = hash_block(parent, token_ids[start : start + AFFINITY_BLOCK_TOKENS])
        hashes.append(parent)
    return hashes


class PrefixOwners:
    """Which shard each remembered prefix block was last sent to (an LRU map)."""

    def __init__(self, capacity: int = MAX_REMEMBERED_BLOCKS):
        self.capacity = capacity
        self._owner: OrderedDict[BlockHash, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owner)

    def seen_tokens(self, hashes: list[BlockHash], num_shards: int) -> list[int]:
        """Per shard: how many leading prompt tokens were last sent there as a prefix.
        A block sent to a shard went there with every block before it."""
        seen = [0] * num_shards
        for i, h in enumerate(hashes):
            shard = self._owner.get(h)
            if shard is None:
                break  # nothing longer was sent anywhere
            if shard < num_shards:
                seen[shard] = (i + 1) * AFFINITY_BLOCK_TOKENS
        return seen

    def record(self, hashes: list[BlockHash], shard: int) -> None:
        for h in hashes:
            self._owner[h] = shard
            self._owner.move_to_end(h)
        while len(self._owner) > self.capacity:
            self._owner.popitem(last=False)


class ShardSet:
    """A variant's shards: one SchedulerClient each, and the pick of one per request."""

    def __init__(self, clients: list[SchedulerClient]):
        if not clients:
            raise ValueError("at least one shard is needed")
        self.clients = clients
        self.owners = PrefixOwners()
        self.num_picked = [0] * len(clients)  # ties go to the shard picked least so far

    def __len__(self) -> int:
        return len(self.clients)

    def pick(self, prompt_token_ids: Sequence[int], cache_salt: str = "") -> int:
        """The index of the shard with the lowest SHARD_SCORE for a new request, among
        those that are ready (all, if none is)."""
        if len(self.clients) == 1:
            self.num_picked[0] += 1
            return 0
        hashes = prefix_hashes(prompt_token_ids, cache_salt)
        seen = self.owners.seen_tokens(hashes, len(self.clients))
        shards = range(len(self.clients))
        candidates = [i for i in shards if self.clients[i].ready] or list(shards)
        num_prompt = len(prompt_token_ids)
        index = min(
            candidates, key=lambda i: (self.score(i, num_prompt, seen[i]), self.num_picked[i], i)
        )
        self.owners.record(hashes, index)
        self.num_picked[index] += 1
        return index

    def score(self, index: int, num_prompt_tokens: int, seen_tokens: int) -> float:
        client = self.clients[index]
        per_worker = client.outstanding_tokens / max(client.num_workers or 1, 1)
        return per_worker + UNSEEN_PROMPT_WEIGHT * (num_prompt_tokens - seen_tokens)

    def start(self) -> None:
        for client in self.clients:
            client.start()

    async def close(self) -> None:
        for client in self.clients:
            await client.close()

    @property
    def ready(self) -> bool:
        """Some shard leads with workers (the others' requests go elsewhere)."""
        return any(c.ready for c in self.clients)

    def fail_all(self, error: ServiceError) -> None:
        for client in self.clients:
            client.fail_all(error)
