"""Identities of full KV blocks, for the prefix cache.

Block i of a request is named by a hash chained over block i-1's hash, block i's
token ids and the request's cache salt, so equal hashes mean equal prefixes (up
to a 128-bit BLAKE2b collision), and requests with different salts never share a
block. The hashes are computed once per request and kept on it: a function of
its tokens, they stay valid through preemption and moves between replicas.
"""

from __future__ import annotations

import hashlib
from array import array

from sarathi_serve.scheduler.request import Request

BlockHash = bytes


def salt_hash(cache_salt: str) -> BlockHash:
    """The parent of a request's first block."""
    return hashlib.blake2b(b"salt\0" + cache_salt.encode(), digest_size=16).digest()


def hash_block(parent: BlockHash, token_ids: list[int]) -> BlockHash:
    data = parent + array("I", token_ids).tobytes()
    return hashlib.blake2b(data, digest_size=16).digest()


def block_hashes(request: Request, block_size: int, num_blocks: int) -> list[BlockHash]:
    """The hashes of the request's first `num_blocks` full blocks (all known tokens)."""
    if request.hash_block_size != block_size:  # a replica with other blocks: start over
        request.block_hashes, request.hash_block_size = [], block_size
    hashes = request.block_hashes
    while len(hashes) < num_blocks:
        start = len(hashes) * block_size
        parent = hashes[-1] if hashes else salt_hash(request.cache_salt)
        hashes.append(hash_block(parent, request.token_ids_between(start, start + block_size)))
    return hashes
