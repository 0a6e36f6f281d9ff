"""The front's routing across replicas, driven directly (no gRPC, no iterations)."""

from __future__ import annotations

import asyncio
import time

import pytest

from sarathi_serve.common.errors import InvalidArgument
from sarathi_serve.common.session import RequestEvent, SessionEvents
from sarathi_serve.common.step import WorkerGeometry
from sarathi_serve.scheduler.core import SchedulerCore
from sarathi_serve.scheduler.front import SchedulerFront
from sarathi_serve.scheduler.iteration import RequestUpdate
from sarathi_serve.scheduler.policies import make_policy
from sarathi_serve.scheduler.stats import StatsRing
from sarathi_serve.scheduler.store import StoredRequest
from sarathi_serve.scheduler.workers import WorkerLink
from tests.scheduler.helpers import GREEDY, make_request

GEOMETRY = WorkerGeometry(num_kv_blocks=64, block_size=16, max_model_len=2048, eos_token_id=0)


def _front() -> SchedulerFront:
    def make_core() -> SchedulerCore:
        return SchedulerCore(make_policy("sarathi", token_budget=64, max_num_seqs=64))

    return SchedulerFront(make_core, None, StatsRing(), session_grace_s=60)


def _stored(i: int) -> StoredRequest:
    return StoredRequest(f"r{i}", list(range(10, 40)), GREEDY, "gw", float(i), [7] * (i % 3))


def _queues(front: SchedulerFront) -> list[list[str]]:
    return [[r.request_id for r in replica.core.state.waiting] for replica in front.replicas]


def test_recovered_requests_are_shared_by_the_workers_that_attach_later():
    async def scenario():
        front = _front()
        front.recover([_stored(i) for i in range(12)])  # a new leader: no worker yet
        assert [len(q) for q in _queues(front)] == [12]
        front.attach(WorkerLink("w0", GEOMETRY))
        assert [len(q) for q in _queues(front)] == [12]
        front.attach(WorkerLink("w1", GEOMETRY))
        front.attach(WorkerLink("w2", GEOMETRY))
        queues = _queues(front)
        assert [len(q) for q in queues] == [4, 4, 4]
        assert sorted(rid for q in queues for rid in q) == sorted(f"r{i}" for i in range(12))
        for queue in queues:  # first come, first served within each replica
            assert queue == sorted(queue, key=lambda rid: int(rid[1:]))
        for replica in front.replicas:  # every request is where its replica looks it up
            assert set(replica.core.requests) == {r.request_id for r in replica.core.state.waiting}
        assert all(r.awaiting_resume for rep in front.replicas for r in rep.core.requests.values())

    asyncio.run(scenario())


def test_a_request_not_yet_persisted_moves_with_its_persist_duty():
    async def scenario():
        front = _front()
        front.attach(WorkerLink("w0", GEOMETRY))
        for i in range(4):
            front.submit(make_request(f"n{i}", 30))
        front.attach(WorkerLink("w1", GEOMETRY))
        for replica in front.replicas:
            # each replica persists exactly the new requests it holds
            assert {r.request_id for r in replica._accepted} == set(replica.core.requests)
        assert [len(q) for q in _queues(front)] == [2, 2]

    asyncio.run(scenario())


def test_a_request_id_in_flight_on_any_replica_is_refused():
    async def scenario():
        front = _front()
        front.attach(WorkerLink("w0", GEOMETRY))
        front.attach(WorkerLink("w1", GEOMETRY))
        front.submit(make_request("a", 30))
        front.submit(make_request("b", 30))  # the other replica: less outstanding work
        assert sorted(r.index for r in front.replicas if r.holds("a") or r.holds("b")) == [0, 1]
        for request_id in ("a", "b"):
            with pytest.raises(InvalidArgument, match="already in flight"):
                front.submit(make_request(request_id, 30))
        front.abort("a")
        front.submit(make_request("a", 30))  # ended: the id is free again
        assert sum(r.holds("a") for r in front.replicas) == 1

    asyncio.run(scenario())


def test_a_reopened_session_gets_a_request_only_after_resuming_it():
    """Tokens released between a gateway's reconnect and its Resume go out with the
    catch-up, in order: never ahead of it (the gateway would take them as the next)."""

    async def scenario():
        front = _front()
        front.attach(WorkerLink("w0", GEOMETRY))
        first = front.sessions.open("gw")
        assert first.get_nowait() == SessionEvents(num_workers=1)  # the acknowledgement
        request = make_request("r", 30, session="gw")
        front.submit(request)
        request.output_token_ids += [7, 8]
        front.sessions.dispatch([RequestUpdate(request, (7,), None, (), 0)])
        front.sessions.dispatch([RequestUpdate(request, (8,), None, (), 1)])
        assert [first.get_nowait().token_ids for _ in range(2)] == [[7], [8]]
        request.num_released = 2
        front.sessions.close("gw", first)  # the gateway drops after receiving token 0
        second = front.sessions.open("gw")
        assert second.get_nowait() == SessionEvents(num_workers=1)
        request.output_token_ids.append(9)
        front.sessions.dispatch([RequestUpdate(request, (9,), None, (), 2)])
        request.num_released = 3
        assert second.empty(), "a token went out before the request was resumed"
        await front.sessions.resume("gw", request, 1)
        assert second.get_nowait().events == [RequestEvent("r", (8, 9), 1)]
        request.output_token_ids.append(10)
        front.sessions.dispatch([RequestUpdate(request, (10,), None, (), 3)])
        assert second.get_nowait().token_ids == [10]

    asyncio.run(scenario())


def test_the_oldest_waiting_request_is_an_autoscaling_signal():
    """`sarathi_scheduler_oldest_waiting_seconds`: the age of the oldest request waiting on
    any replica (the queue depth's companion for KEDA / an HPA); 0 once none waits."""
    from prometheus_client import generate_latest

    from sarathi_serve.scheduler.metrics import SchedulerMetrics

    async def scenario():
        front = _front()
        front.recover([_stored(i) for i in range(6)])
        front.attach(WorkerLink("w0", GEOMETRY))
        front.attach(WorkerLink("w1", GEOMETRY))
        now = time.time()
        for replica, arrival in zip(front.replicas, (now - 30, now - 5), strict=True):
            for request in replica.core.state.waiting:
                request.arrival_time = arrival
        assert front.occupancy.oldest_waiting_arrival == now - 30
        metrics = SchedulerMetrics("s0")
        metrics.watch(lambda: front)
        text = generate_latest(metrics.registry).decode()
        (line,) = [x for x in text.splitlines() if x.startswith("sarathi_scheduler_oldest_")]
        assert 29.0 <= float(line.split()[-1]) <= 60.0
        assert "sarathi_scheduler_waiting_requests" in text
        for replica in front.replicas:
            replica.core.state.waiting.clear()
        text = generate_latest(metrics.registry).decode()
        assert 'sarathi_scheduler_oldest_waiting_seconds{policy="sarathi"} 0.0' in text

    asyncio.run(scenario())


def test_a_swap_keeps_a_measured_target_and_a_factor_alone_measures_it_again():
    front = _front()
    policy, _ = front.swap_policy("sarathi", target_tbt_factor=5.0)
    assert (policy.target_tbt_factor, policy.target_tbt_ms) == (5.0, 0.0)
    front.policy.target_tbt_ms = 300.0  # what the policy measured (5 x a 60 ms step)
    policy, _ = front.swap_policy("sarathi", token_budget=256)
    assert (policy.target_tbt_factor, policy.target_tbt_ms, policy.token_budget) == (5, 300, 256)
    policy, _ = front.swap_policy("sarathi", target_tbt_factor=4.0)
    assert (policy.target_tbt_factor, policy.target_tbt_ms) == (4.0, 0.0)  # measured again
    policy, _ = front.swap_policy("sarathi", target_tbt_ms=0.0, target_tbt_factor=0.0)
    assert (policy.target_tbt_factor, policy.target_tbt_ms, policy.guard) == (0, 0, None)
    assert front.swap_policy("vllm")[0].name == "vllm"
