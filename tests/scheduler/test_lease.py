"""Leader lease against a real redis-server: one leader, epochs grow, expiry hands over."""

import asyncio

import pytest
import redis.asyncio as aioredis

from sarathi_serve.scheduler.lease import LeaderLease
from tests.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def test_one_leader_at_a_time_and_epochs_grow(redis_server):
    async def scenario():
        client = aioredis.from_url(redis_server.url)
        a = LeaderLease(client, "l1", "a", ttl_ms=300)
        b = LeaderLease(client, "l1", "b", ttl_ms=300)
        first = await a.try_acquire()
        assert first == 1 and await b.try_acquire() is None
        assert await a.renew() and not await b.renew()
        assert await a.leader() == "a"
        await asyncio.sleep(0.45)  # a stops renewing: the lease expires
        second = await b.try_acquire()
        assert second == 2 and not await a.renew()
        await b.release()
        assert await a.try_acquire() == 3
        await client.aclose()

    asyncio.run(scenario())
