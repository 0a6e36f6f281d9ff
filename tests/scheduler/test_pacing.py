"""Plan pacing: step n+1 is planned shortly before step n is due to end, so a request
that arrives while step n computes joins step n+1 (without a pacer: step n+2), and the
lead before the predicted end grows when the worker waits for a plan."""

from __future__ import annotations

import asyncio
import time

import pytest

from sarathi_serve.common.convert import plan_from_pb, result_to_pb
from sarathi_serve.common.step import WorkerGeometry
from sarathi_serve.scheduler.core import SchedulerCore
from sarathi_serve.scheduler.front import SchedulerFront
from sarathi_serve.scheduler.iteration import PlannedStep
from sarathi_serve.scheduler.pacing import MIN_LEAD_MS, PlanPacer
from sarathi_serve.scheduler.policies import make_policy
from sarathi_serve.scheduler.stats import StatsRing
from sarathi_serve.scheduler.workers import WorkerLink
from sarathi_serve.worker.engine import WorkerEngine
from tests.scheduler.helpers import make_request
from tests.scheduler.test_pipelined import ContextModel

STEP_S = 0.1
GEOMETRY = WorkerGeometry(num_kv_blocks=256, block_size=16, max_model_len=4096, eos_token_id=0)


def _decode_step() -> PlannedStep:
    core = SchedulerCore(make_policy("sarathi", token_budget=64, max_num_seqs=8))
    core.attach_worker(GEOMETRY)
    core.add(make_request("a", 4))
    return core.plan(0, 0.0)


def test_the_pacer_plans_a_lead_before_the_predicted_end_and_adapts_the_lead():
    pacer = PlanPacer()
    step = _decode_step()
    assert pacer.due(10.0, step) == 10.0, "no model yet: plan at once"
    for _ in range(10):
        pacer.observe(step, 100.0, worker_wait_ms=0.0)
    lead = pacer.lead_ms
    assert MIN_LEAD_MS <= lead < 4 * MIN_LEAD_MS  # on time: the lead shrank
    assert pacer.due(10.0, step) == pytest.approx(10.0 + (100.0 - lead) / 1e3, abs=1e-3)
    pacer.observe(step, 100.0, worker_wait_ms=3.0)  # the worker waited for that plan
    assert pacer.lead_ms >= 2 * lead + 3.0 - 1e-9 and pacer.num_late == 1
    for _ in range(200):
        pacer.observe(step, 100.0, worker_wait_ms=0.0)
    assert pacer.lead_ms == MIN_LEAD_MS
    for _ in range(20):  # a worker that always waits: plans go out at once again
        pacer.observe(step, 100.0, worker_wait_ms=50.0)
    assert pacer.due(10.0, step) == 10.0


async def _worker(link: WorkerLink, steps: list[tuple[int, list[str], float]]) -> None:
    """Runs each plan for STEP_S as the real worker does (in order, the next plan may be
    waiting), and records (step id, requests in the step, when the step began)."""
    engine = WorkerEngine(ContextModel(GEOMETRY))  # type: ignore[arg-type]
    last_result_at: float | None = None
    while (msg := await link.outbox.get()) is not None:
        received_at = time.perf_counter()
        plan = plan_from_pb(msg)
        steps.append((plan.step_id, [c.request_id for c in plan.chunks], received_at))
        await asyncio.sleep(STEP_S)
        result = result_to_pb(engine.step(plan))
        result.execution_ms = STEP_S * 1e3
        if last_result_at is not None:
            result.worker_wait_ms = (received_at - last_result_at) * 1e3
        link.deliver(result)
        last_result_at = time.perf_counter()


@pytest.mark.parametrize("pace", [True, False])
def test_a_request_that_arrives_mid_step_joins_the_next_step_when_paced(pace):
    async def scenario() -> int:
        front = SchedulerFront(
            lambda: SchedulerCore(make_policy("sarathi", token_budget=64, max_num_seqs=8)),
            None,
            StatsRing(),
            pace_plans=pace,
        )
        link = WorkerLink("w0", GEOMETRY)
        front.attach(link)
        steps: list[tuple[int, list[str], float]] = []
        tasks = [asyncio.ensure_future(front.run()), asyncio.ensure_future(_worker(link, steps))]
        front.submit(make_request("long", 8, max_tokens=200))
        while len(steps) < 14:  # the pacer's model is ready after 8 steps
            await asyncio.sleep(0.005)
        computing = steps[-1][0]
        await asyncio.sleep(0.01)  # 10 ms into that step
        front.submit(make_request("new", 8, max_tokens=4))
        while not any("new" in ids for _, ids, _ in steps):
            await asyncio.sleep(0.005)
        joined = next(step_id for step_id, ids, _ in steps if "new" in ids)
        for task in tasks:
            task.cancel()
        return joined - computing

    assert asyncio.run(scenario()) == (1 if pace else 2)
