"""KV-block accounting of one worker: which blocks each request holds, and which hold
a cached prefix.

A full block whose KV is computed is identified by a hash chained over its
parent's hash, its token ids and the request's cache salt (`block_hashes.py`).
Blocks are reference counted: requests that share a prefix share its blocks. A
block nobody references is free, but keeps its KV and its hash until it is
needed for something else: free blocks are reused least recently freed first, so
a prefix that keeps being asked for stays cached. The worker never writes into a
shared block: a request reuses whole blocks of its prompt only, and always
computes its last prompt token (there must be something to sample from).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from sarathi_serve.common.block_hash import BlockHash
from sarathi_serve.scheduler.block_hashes import block_hashes
from sarathi_serve.scheduler.request import Request


@dataclass(slots=True)
class PrefixCacheStats:
    """Counted in tokens, as vLLM counts them."""

    queries: int = 0  # prompt tokens looked up (at each admission)
    hits: int = 0  # of those, found cached


class BlockManager:
    """Hands out fixed-size KV blocks; a request's blocks are `request.block_ids`.

    New requests are admitted only while `watermark` of the blocks stays free, so
    running requests can keep decoding without immediate preemption.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        watermark: float = 0.01,
        *,
        caching: bool = True,
        stats: PrefixCacheStats | None = None,
    ):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}"
            )
        if not 0 <= watermark < 1:
            raise ValueError(f"watermark must be in [0, 1), got {watermark}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_watermark_blocks = int(watermark * num_blocks)
        self.caching = caching
        self.stats = PrefixCacheStats() if stats is None else stats
        self._refs = [0] * num_blocks
        self._hash_of: list[BlockHash | None] = [None] * num_blocks
        self._cached: dict[BlockHash, int] = {}  # hash -> the block holding that KV
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request holds (cached ones among them, evicted when needed)."""
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def num_blocks_needed(self, request: Request, num_new_tokens: int) -> int:
        num_tokens = request.num_computed_tokens + num_new_tokens
        return max(0, -(-num_tokens // self.block_size) - len(request.block_ids))

    def can_allocate(self, request: Request, num_new_tokens: int, *, admit: bool = False) -> bool:
        """Whether `num_new_tokens` more tokens fit; `admit` applies the watermark."""
        reserve = self.num_watermark_blocks if admit else 0
        return self.num_blocks_needed(request, num_new_tokens) <= self.num_free_blocks - reserve

    def allocate(self, request: Request, num_new_tokens: int) -> None:
        needed = self.num_blocks_needed(request, num_new_tokens)
        if needed > len(self._free):
            raise RuntimeError(f"out of KV blocks: need {needed}, have {len(self._free)}")
        for _ in range(needed):
            block, _ = self._free.popitem(last=False)  # least recently freed
            old = self._hash_of[block]
            if old is not None:  # evicted: its KV is about to be overwritten
                self._hash_of[block] = None
                del self._cached[old]
            self._refs[block] = 1
            request.block_ids.append(block)

    def free(self, request: Request) -> None:
        """Drops the request's references; its last blocks are reused first."""
        for block in reversed(request.block_ids):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free[block] = None
        request.block_ids = []
        request.num_blocks_sent = 0
        request.num_cached_blocks = 0

    # ---- the prefix cache ---------------------------------------------------

    def cached_prefix_tokens(self, request: Request) -> int:
        """How many prompt tokens of a request that holds nothing are cached here."""
        if not self.caching:
            return 0
        return self._longest_prefix(request) * self.block_size

    def reuse_cached_prefix(self, request: Request) -> int:
        """Starts a request that holds nothing with its longest cached prefix (whole
        blocks, never its last token) as computed tokens; returns their number."""
        if not self.caching or request.block_ids:
            return 0
        num_blocks = self._longest_prefix(request)
        hashes = request.block_hashes
        for i in range(num_blocks):
            block = self._cached[hashes[i]]
            if self._refs[block] == 0:
                del self._free[block]
            self._refs[block] += 1
            request.block_ids.append(block)
        request.num_cached_blocks = num_blocks
        request.num_computed_tokens = num_blocks * self.block_size
        self.stats.queries += request.num_tokens
        self.stats.hits += request.num_computed_tokens
        return request.num_computed_tokens

    def forget_reuse(self, request: Request) -> None:
        """Undoes `reuse_cached_prefix` for a request that was not admitted after all."""
        if request.block_ids:
            self.stats.queries -= request.num_tokens
            self.stats.hits -= request.num_computed_tokens
            self.free(request)
            request.num_computed_tokens = 0

    def cache_computed_blocks(self, request: Request) -> None:
        """Registers the request's full blocks whose KV is computed (or being computed
        in the step just planned: the worker runs steps in order, so a later step that
        reuses them reads it). Cheap when nothing new is full: one comparison."""
        # A decode planned before the previous step's result is applied computes a token
        # the scheduler does not know yet: only known tokens are hashed.
        num_full = min(request.num_computed_tokens, request.num_tokens) // self.block_size
        if not self.caching or num_full <= request.num_cached_blocks:
            return
        hashes = block_hashes(request, self.block_size, num_full)
        for i in range(request.num_cached_blocks, num_full):
            block = request.block_ids[i]
            if hashes[i] not in self._cached:  # else another block holds the same KV
                self._cached[hashes[i]] = block
                self._hash_of[block] = hashes[i]
        request.num_cached_blocks = num_full

    def forget_cached(self, request: Request) -> None:
        """Drops from the cache the request's blocks that nobody else holds: their KV may
        be incomplete (the request failed)."""
        for block in request.block_ids:
            old = self._hash_of[block]
            if self._refs[block] == 1 and old is not None:
                self._hash_of[block] = None
                del self._cached[old]

    def _longest_prefix(self, request: Request) -> int:
        max_blocks = (request.num_tokens - 1) // self.block_size  # the last token is computed
        hashes = block_hashes(request, self.block_size, max_blocks)
        num_blocks = 0
        while num_blocks < max_blocks and hashes[num_blocks] in self._cached:
            num_blocks += 1
        return num_blocks
