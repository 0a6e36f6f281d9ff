"""IterationLoop placement across replicas, driven directly (no gRPC, no iterations)."""

from __future__ import annotations

import asyncio

from sarathi_serve.common.step import WorkerGeometry
from sarathi_serve.scheduler.core import SchedulerCore
from sarathi_serve.scheduler.loop import IterationLoop
from sarathi_serve.scheduler.policies import make_policy
from sarathi_serve.scheduler.sessions import SessionHub
from sarathi_serve.scheduler.stats import StatsRing
from sarathi_serve.scheduler.store import StoredRequest
from sarathi_serve.scheduler.workers import WorkerLink
from tests.scheduler.helpers import GREEDY, make_request

GEOMETRY = WorkerGeometry(num_kv_blocks=64, block_size=16, max_model_len=2048, eos_token_id=0)


def _loop() -> IterationLoop:
    def make_core() -> SchedulerCore:
        return SchedulerCore(make_policy("sarathi", token_budget=64, max_num_seqs=64))

    return IterationLoop(make_core, SessionHub(), None, StatsRing(), session_grace_s=60)


def _stored(i: int) -> StoredRequest:
    return StoredRequest(f"r{i}", list(range(10, 40)), GREEDY, "gw", float(i), [7] * (i % 3))


def _queues(loop: IterationLoop) -> list[list[str]]:
    return [[r.request_id for r in replica.core.state.waiting] for replica in loop.replicas]


def test_recovered_requests_are_shared_by_the_workers_that_attach_later():
    async def scenario():
        loop = _loop()
        loop.recover([_stored(i) for i in range(12)])  # a new leader: no worker yet
        assert [len(q) for q in _queues(loop)] == [12]
        loop.attach(WorkerLink("w0", GEOMETRY))
        assert [len(q) for q in _queues(loop)] == [12]
        loop.attach(WorkerLink("w1", GEOMETRY))
        loop.attach(WorkerLink("w2", GEOMETRY))
        queues = _queues(loop)
        assert [len(q) for q in queues] == [4, 4, 4]
        assert sorted(rid for q in queues for rid in q) == sorted(f"r{i}" for i in range(12))
        for queue in queues:  # first come, first served within each replica
            assert queue == sorted(queue, key=lambda rid: int(rid[1:]))
        for replica in loop.replicas:  # every request is where its replica looks it up
            assert set(replica.core.requests) == {r.request_id for r in replica.core.state.waiting}
        assert all(r.awaiting_resume for c in loop.cores() for r in c.requests.values())

    asyncio.run(scenario())


def test_a_request_not_yet_persisted_moves_with_its_persist_duty():
    async def scenario():
        loop = _loop()
        loop.attach(WorkerLink("w0", GEOMETRY))
        for i in range(4):
            loop.submit(make_request(f"n{i}", 30))
        loop.attach(WorkerLink("w1", GEOMETRY))
        for replica in loop.replicas:
            assert {r.request_id for r in replica.accepted} == set(replica.core.requests)
        assert [len(q) for q in _queues(loop)] == [2, 2]

    asyncio.run(scenario())
