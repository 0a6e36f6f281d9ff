"""RedisStore against a real redis-server: schema and one round trip per iteration."""

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from sarathi_serve.scheduler.iteration import RequestUpdate
from sarathi_serve.scheduler.request import StopReason
from sarathi_serve.scheduler.store import Fenced, RedisStore, pack_tokens, unpack_tokens
from tests.redis_server import RedisServer
from tests.scheduler.helpers import make_request


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def test_pack_round_trip():
    assert unpack_tokens(pack_tokens([0, 1, 49151, 2**32 - 1])) == [0, 1, 49151, 2**32 - 1]


def test_requests_and_tokens_persist_in_one_round_trip(redis_server):
    async def scenario():
        client = aioredis.from_url(redis_server.url)
        store = RedisStore(client, prefix="t1", finished_ttl_s=60)
        a, b = make_request("a", 3), make_request("b", 2)
        calls = []
        original = store._batch

        async def counting_batch(*args, **kwargs):
            calls.append(1)
            return await original(*args, **kwargs)

        store._batch = counting_batch
        await store.persist_iteration([a, b], [])
        await store.persist_iteration(
            [], [RequestUpdate(a, (5,), None), RequestUpdate(b, (6,), None)]
        )
        await store.persist_iteration([], [RequestUpdate(a, (7,), StopReason.LENGTH)], ended=[b])
        assert len(calls) == 3  # one round trip per iteration, whatever the number of requests

        req = await client.hgetall("t1:req:a")
        assert unpack_tokens(req[b"prompt"]) == a.prompt_token_ids
        assert json.loads(req[b"sampling"])["max_tokens"] == 8
        assert req[b"status"] == b"finished" and req[b"stop_reason"] == b"length"
        assert await store.load_output("a") == [5, 7]
        assert await store.load_output("b") == [6]
        assert (await client.hget("t1:req:b", "stop_reason")) == b"aborted"
        assert await client.smembers("t1:inflight") == set()
        assert 0 < await client.ttl("t1:out:a") <= 60
        await client.aclose()

    asyncio.run(scenario())


def test_packed_appends_keep_each_request_s_tokens_apart(redis_server):
    async def scenario():
        client = aioredis.from_url(redis_server.url)
        store = RedisStore(client, prefix="packed")
        ids = ["r", "request-with-a-longer-id", "zürich-é", "x" * 300]
        requests = [make_request(rid, 2) for rid in ids]
        await store.persist_iteration(requests, [])
        await store.persist_iteration(
            [],
            [
                RequestUpdate(requests[0], (1,), None),
                RequestUpdate(requests[1], (), None),  # no token this iteration
                RequestUpdate(requests[2], (2**32 - 1, 0, 3), None),  # a resume catch-up
                RequestUpdate(requests[3], (4, 5), None),
            ],
        )
        await store.persist_iteration([], [RequestUpdate(requests[0], (6,), None)])
        outputs = {r.request_id: r.output_token_ids for r in await store.load_inflight()}
        assert outputs == {ids[0]: [1, 6], ids[1]: [], ids[2]: [2**32 - 1, 0, 3], ids[3]: [4, 5]}
        await client.aclose()

    asyncio.run(scenario())


def test_inflight_set_tracks_unfinished(redis_server):
    async def scenario():
        client = aioredis.from_url(redis_server.url)
        store = RedisStore(client, prefix="t2")
        await store.persist_iteration([make_request("x", 1), make_request("y", 1)], [])
        assert await client.smembers("t2:inflight") == {b"x", b"y"}
        await client.aclose()

    asyncio.run(scenario())


def test_a_stale_leader_is_fenced_off(redis_server):
    async def scenario():
        client = aioredis.from_url(redis_server.url)
        await client.set("t3:epoch", 5)
        leader = RedisStore(client, prefix="t3", epoch=5)
        stale = RedisStore(client, prefix="t3", epoch=4)
        await leader.persist_iteration([make_request("a", 2)], [])
        with pytest.raises(Fenced):
            await stale.persist_iteration([make_request("b", 2)], [])
        assert await client.smembers("t3:inflight") == {b"a"}  # nothing of the stale write landed
        await client.aclose()

    asyncio.run(scenario())


def test_load_inflight_resumes_requests_with_their_tokens(redis_server):
    async def scenario():
        client = aioredis.from_url(redis_server.url)
        store = RedisStore(client, prefix="t4")
        a, b = make_request("a", 3, session="gw1"), make_request("b", 2, session="gw2")
        b.arrival_time = 1.0
        await store.persist_iteration([a, b], [])
        await store.persist_iteration(
            [], [RequestUpdate(a, (7, 8), None), RequestUpdate(b, (9,), StopReason.EOS)]
        )
        stored = await store.load_inflight()
        assert [s.request_id for s in stored] == ["a"]  # b finished
        assert stored[0].prompt_token_ids == a.prompt_token_ids and stored[0].output_token_ids == [
            7,
            8,
        ]
        assert stored[0].sampling == a.sampling and stored[0].session_id == "gw1"
        await client.aclose()

    asyncio.run(scenario())


def test_a_recovered_request_keeps_its_priority_tenant_and_salt(redis_server):
    async def scenario():
        client = aioredis.from_url(redis_server.url)
        store = RedisStore(client, prefix="t-class")
        req = make_request("classy", 4)
        req.priority, req.tenant, req.cache_salt = -3, "acme", "pepper"
        await store.persist_iteration([req], [RequestUpdate(req, (9,), None)])
        (stored,) = await store.load_inflight()
        again = stored.to_request(awaiting_resume=True)
        assert (again.priority, again.tenant, again.cache_salt) == (-3, "acme", "pepper")
        assert again.output_token_ids == [9]
        await client.aclose()

    asyncio.run(scenario())
