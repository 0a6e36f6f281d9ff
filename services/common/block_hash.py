"""Identities of full blocks of tokens: a hash chained over the previous block's hash,
the block's token ids and a cache salt, so equal hashes mean equal prefixes (up to a
128-bit BLAKE2b collision) and prefixes under different salts never match. The
scheduler's prefix cache names KV blocks by them; the gateway's shard routing
remembers prefixes by them."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

BlockHash = bytes


def salt_hash(cache_salt: str) -> BlockHash:
    """The parent of a request's first block."""
    return hashlib.blake2b(b"salt\0" + cache_salt.encode(), digest_size=16).digest()


def hash_block(parent: BlockHash, token_ids: Sequence[int]) -> BlockHash:
    data = parent + array("I", token_ids).tobytes()
    return hashlib.blake2b(data, digest_size=16).digest()
