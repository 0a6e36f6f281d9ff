"""A replica with a worker of two pipeline stages keeps two micro-batches in flight:
the stages compute at once, every request gets the tokens of one-step-at-a-time, the
stage times reach the replica, and an idle replica sends no plans (no busy loop)."""

from __future__ import annotations

import asyncio

import pytest

from sarathi_serve.common.convert import plan_from_pb, result_to_pb
from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.common.step import StepResult, WorkerGeometry
from sarathi_serve.scheduler.core import SchedulerCore
from sarathi_serve.scheduler.front import SchedulerFront
from sarathi_serve.scheduler.policies import make_policy
from sarathi_serve.scheduler.request import Request
from sarathi_serve.scheduler.stats import StatsRing
from sarathi_serve.scheduler.workers import WorkerLink
from sarathi_serve.worker.engine import WorkerEngine
from tests.scheduler.test_pipelined import EOS, ContextModel, TwoStages

STAGE_S = 0.02
GEOMETRY = WorkerGeometry(128, 4, 256, EOS, pipeline_depth=2)


class Pipeline:
    """Two stages as asyncio tasks, STAGE_S each a micro-batch: the first takes plans
    from the link and starts step k once the outputs of the steps up to k - 2 are back,
    with the tokens of every output back by then (micro_batches.PipelineLeader); the last
    delivers results."""

    def __init__(self, link: WorkerLink):
        self.link, self.stages = link, TwoStages(GEOMETRY)
        self.handoff: asyncio.Queue = asyncio.Queue()
        self.outputs: list[StepResult] = []  # the last stage's, in order
        self.seen = 0  # of them, applied by the first stage
        self.started: list[int] = []  # the steps the first stage took
        self.busy = [False, False]
        self.both_busy = 0  # times a stage started while the other computed
        self.plans = 0

    async def first(self) -> None:
        while (msg := await self.link.outbox.get()) is not None:
            plan = plan_from_pb(msg)
            self.plans += 1
            done = lambda: {r.step_id for r in self.outputs}
            while any(s <= plan.step_id - 2 and s not in done() for s in self.started):
                await asyncio.sleep(0.001)  # steps k - 2 and before must be back
            self.started.append(plan.step_id)
            back = self.outputs[self.seen :]
            self.seen += len(back)
            self.stages.first.apply_tokens(
                [(r.step_id, rid, t) for r in back for rid, t in r.sampled.items()]
            )
            self.stages.first.step(plan)
            await self._compute(0)
            await self.handoff.put(plan)

    async def last(self) -> None:
        while True:
            plan = await self.handoff.get()
            await self._compute(1)
            result = self.stages.last.step(plan)
            self.outputs.append(result)
            message = result_to_pb(result)
            message.execution_ms = 2 * STAGE_S * 1e3
            message.stage_busy_ms[:] = [STAGE_S * 1e3] * 2
            message.stage_idle_ms[:] = [0.0, 1.0]
            self.link.deliver(message)

    async def _compute(self, stage: int) -> None:
        self.busy[stage] = True
        self.both_busy += self.busy[1 - stage]
        await asyncio.sleep(STAGE_S)
        self.busy[stage] = False


def _requests() -> list[Request]:
    return [
        Request(
            f"r{i}",
            [(5 * i + j) % 50 + 3 for j in range(4 + 7 * i % 13)],
            SamplingParams(temperature=0.0, max_tokens=6 + 2 * i, ignore_eos=True),
            "s",
            0.0,
        )
        for i in range(6)
    ]


def _one_step_at_a_time() -> dict[str, list[int]]:
    core = SchedulerCore(make_policy("sarathi", token_budget=16, max_num_seqs=8))
    core.attach_worker(WorkerGeometry(128, 4, 256, EOS))
    engine = WorkerEngine(ContextModel(GEOMETRY))  # type: ignore[arg-type]
    for request in _requests():
        core.add(request)
    outputs: dict[str, list[int]] = {}
    for step in range(500):
        for update in core.apply(engine.step(core.plan(step, 0.0).plan), 0.0):
            outputs.setdefault(update.request.request_id, []).extend(update.token_ids)
        if not core.has_work:
            return outputs
    raise AssertionError("did not finish")


def test_two_micro_batches_in_flight_give_the_tokens_of_one_step_at_a_time():
    async def scenario() -> tuple[dict[str, list[int]], Pipeline, SchedulerFront]:
        front = SchedulerFront(
            lambda: SchedulerCore(make_policy("sarathi", token_budget=16, max_num_seqs=8)),
            None,
            StatsRing(),
        )
        link = WorkerLink("w0", GEOMETRY)
        front.attach(link)
        pipeline = Pipeline(link)
        tasks = [asyncio.ensure_future(t) for t in (front.run(), pipeline.first(), pipeline.last())]
        requests = _requests()
        for request in requests:
            front.submit(request)
        for _ in range(2000):
            if all(r.is_finished for r in requests):
                break
            await asyncio.sleep(0.01)
        outputs = {r.request_id: r.output_token_ids for r in requests}
        plans = pipeline.plans
        await asyncio.sleep(0.3)  # idle: no busy loop of empty plans
        assert pipeline.plans - plans <= 2, "an idle replica keeps sending plans"
        for task in tasks:
            task.cancel()
        return outputs, pipeline, front

    outputs, pipeline, front = asyncio.run(scenario())
    assert outputs == _one_step_at_a_time()
    assert pipeline.both_busy > 10, "the stages never computed at once"
    (replica,) = front.replicas
    assert len(replica.stage_times.busy_s) == 2 and replica.stage_times.idle_s[1] > 0
    assert 0 < replica.stage_times.bubble_fractions[1] < 0.2


def test_a_step_result_carries_its_stage_times_over_the_contract():
    from sarathi_serve.common.convert import result_from_pb

    result = StepResult(3, {"a": 5}, 10.0, stage_busy_ms=(4.0, 6.0), stage_idle_ms=(0.0, 2.5))
    assert result_from_pb(result_to_pb(result)) == result


def test_idle_time_before_any_request_ran_is_no_bubble():
    """The stages' idle time before a micro-batch planned while no request was running
    is time without work, not a pipeline bubble (the orca policy's micro-batches, one
    at a time while requests run, are bubbles)."""
    from sarathi_serve.scheduler.stats import StageTimes

    times = StageTimes()
    result = StepResult(0, stage_busy_ms=(5.0, 5.0), stage_idle_ms=(900.0, 905.0))
    assert times.observe(result, served=False).stage_idle_ms == (0.0, 0.0)
    times.observe(StepResult(1, stage_busy_ms=(5.0, 5.0), stage_idle_ms=(1.0, 5.0)), served=True)
    assert times.bubble_fractions == pytest.approx([1 / 11, 5 / 15])
