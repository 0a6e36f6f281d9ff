"""Leader election through a Redis lease, with a fencing token.

The leader holds `{p}:leader` (its id, with a TTL) and renews it well before
it expires. Taking the lease increments `{p}:epoch`; every write of the leader
is checked against that epoch (see `store.py`), so a scheduler that lost the
lease, paused or partitioned, can never write again.
"""

from __future__ import annotations

import redis.asyncio as aioredis

# Renew only our own lease.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# Take a free lease and bump the epoch, atomically.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaderLease:
    def __init__(self, client: aioredis.Redis, prefix: str, holder: str, ttl_ms: int = 3000):
        self.client = client
        self.holder = holder
        self.ttl_ms = ttl_ms
        self.lease_key = f"{prefix}:leader"
        self.epoch_key = f"{prefix}:epoch"
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    async def try_acquire(self) -> int | None:
        """The new epoch when this holder became leader, else None."""
        epoch = await self._acquire(
            keys=[self.lease_key, self.epoch_key], args=[self.holder, self.ttl_ms]
        )
        return int(epoch) or None

    async def renew(self) -> bool:
        """False once another holder has the lease (or it expired)."""
        return bool(await self._renew(keys=[self.lease_key], args=[self.holder, self.ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=[self.lease_key], args=[self.holder])

    async def leader(self) -> str | None:
        value = await self.client.get(self.lease_key)
        return value.decode() if isinstance(value, bytes) else value
