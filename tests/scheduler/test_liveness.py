"""A worker that hangs (its stream open, no result coming) is dropped once its step
outlives its allowance, and its requests finish on another replica, exactly."""

from __future__ import annotations

import asyncio
import time

from sarathi_serve.common.convert import plan_from_pb, result_to_pb
from sarathi_serve.common.step import NewRequest, ScheduledChunk, StepPlan, WorkerGeometry
from sarathi_serve.scheduler.core import SchedulerCore
from sarathi_serve.scheduler.front import SchedulerFront
from sarathi_serve.scheduler.iteration import PlannedStep
from sarathi_serve.scheduler.liveness import (
    FALLBACK_MS_PER_TOKEN,
    HANG_FACTOR,
    WARMUP_FACTOR,
    WARMUP_STEPS,
    StepDeadline,
)
from sarathi_serve.scheduler.policies import make_policy
from sarathi_serve.scheduler.policies.step_model import StepShape
from sarathi_serve.scheduler.stats import StatsRing
from sarathi_serve.scheduler.workers import WorkerLink
from sarathi_serve.worker.engine import WorkerEngine
from tests.scheduler.helpers import make_request
from tests.scheduler.test_pipelined import ContextModel

MAX_TOKENS = 24
GEOMETRY = WorkerGeometry(num_kv_blocks=256, block_size=16, max_model_len=4096, eos_token_id=0)


async def serve(link: WorkerLink, hang_after: int | None = None) -> None:
    """Answers the link's plans like a worker; after `hang_after` plans, never again."""
    engine = WorkerEngine(ContextModel(GEOMETRY))
    served = 0
    while (msg := await link.outbox.get()) is not None:
        if hang_after is not None and served >= hang_after:
            continue  # stopped: the plans pile up unanswered, the stream stays open
        await asyncio.sleep(0.01)
        link.deliver(result_to_pb(engine.step(plan_from_pb(msg))))
        served += 1


def test_a_hung_worker_is_dropped_and_its_requests_finish_elsewhere():
    async def scenario():
        def make_core():
            return SchedulerCore(make_policy("sarathi", token_budget=64, max_num_seqs=64))

        front = SchedulerFront(make_core, None, StatsRing(), worker_stall_s=0.3)
        outbox = front.sessions.open("gw")
        hung, healthy = WorkerLink("hung", GEOMETRY), WorkerLink("healthy", GEOMETRY)
        front.attach(hung)
        for i in range(4):
            front.submit(make_request(f"r{i}", 20, max_tokens=MAX_TOKENS, session="gw"))
        # past its first steps (whose allowance is WARMUP_FACTOR times longer), then it hangs
        workers = [asyncio.ensure_future(serve(hung, hang_after=10))]
        run = asyncio.ensure_future(front.run())
        await asyncio.sleep(0.3)  # the hung worker has run them all for a while
        front.attach(healthy)
        workers.append(asyncio.ensure_future(serve(healthy)))
        tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(4)}
        ended: set[str] = set()
        started = time.monotonic()
        while len(ended) < 4:
            batch = await asyncio.wait_for(outbox.get(), timeout=10)
            for rid, token, index in zip(
                batch.token_request_ids, batch.token_ids, batch.token_indexes, strict=True
            ):
                assert index == len(tokens[rid]), (rid, index, tokens[rid])
                tokens[rid].append(token)
            for event in batch.events:
                assert (
                    event.first_token_index == len(tokens[event.request_id]) or not event.token_ids
                )
                tokens[event.request_id].extend(event.token_ids)
                if event.stop_reason is not None:
                    assert event.stop_reason.name == "LENGTH", event
                    ended.add(event.request_id)
        assert time.monotonic() - started < 5
        assert hung.closed and not healthy.closed and front.num_workers == 1
        for rid, got in tokens.items():
            assert got == reference(rid), rid  # recomputed: not a token lost or changed
        run.cancel()
        for task in workers:
            task.cancel()

    asyncio.run(scenario())


def reference(request_id: str) -> list[int]:
    """What a request gets from a worker that never hangs."""
    engine = WorkerEngine(ContextModel(GEOMETRY))
    request = make_request(request_id, 20, max_tokens=MAX_TOKENS)
    tokens = list(request.prompt_token_ids)
    plan = StepPlan(
        0,
        (NewRequest(request_id, tuple(tokens), 0, request.sampling),),
        (ScheduledChunk(request_id, len(tokens), (0, 1, 2)),),
    )
    out = [engine.step(plan).sampled[request_id]]
    for step in range(1, MAX_TOKENS):
        plan = StepPlan(step, chunks=(ScheduledChunk(request_id, 1, ()),))
        out.append(engine.step(plan).sampled[request_id])
    return out


def test_the_allowance_grows_with_the_predicted_step():
    deadline = StepDeadline(stall_s=2.0)
    step = PlannedStep(StepPlan(0), StepShape(100, 0), (), "sarathi", 100)
    fallback = 2.0 + HANG_FACTOR * FALLBACK_MS_PER_TOKEN * 100 / 1e3
    assert deadline.allowance_s(step) == WARMUP_FACTOR * fallback  # a worker's first steps
    for _ in range(WARMUP_STEPS):
        deadline.observe(step, 500.0)
    assert deadline.allowance_s(step) == fallback
    for _ in range(20):
        deadline.observe(step, 500.0)
        deadline.observe(PlannedStep(StepPlan(0), StepShape(0, 10), (), "sarathi", 10), 50.0)
    assert abs(deadline.allowance_s(step) - (2.0 + HANG_FACTOR * 0.5)) < 0.1


def test_the_stall_flag_and_its_default():
    from sarathi_serve.scheduler.config import SchedulerConfig

    assert SchedulerConfig().worker_stall_s == 5.0
    assert SchedulerConfig.from_args(["--worker-stall-s", "0"]).worker_stall_s == 0.0
    never = SchedulerFront(
        lambda: SchedulerCore(make_policy("sarathi", token_budget=64, max_num_seqs=8)),
        None,
        StatsRing(),
    )
    assert never.replicas[0].deadline is None  # 0: a worker is never taken for hung
    watched = SchedulerFront(
        lambda: SchedulerCore(make_policy("sarathi", token_budget=64, max_num_seqs=8)),
        None,
        StatsRing(),
        worker_stall_s=5.0,
    )
    assert watched.replicas[0].deadline.stall_s == 5.0
