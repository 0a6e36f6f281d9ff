"""The worker's health follows progress: NOT_SERVING while one step runs past --hang-s."""

import asyncio
import time

from grpc_health.v1 import health, health_pb2

from sarathi_serve.common.step import StepPlan, StepResult
from sarathi_serve.worker.__main__ import _watch_progress
from sarathi_serve.worker.metrics import MeteredEngine
from sarathi_serve.worker.submit import StepByStep


class StuckEngine(StepByStep):
    """Its steps last until `release` is set."""

    def __init__(self):
        self.release = asyncio.Event()

    def step(self, plan: StepPlan) -> StepResult:
        while not self.release.is_set():
            time.sleep(0.01)
        return StepResult(plan.step_id)

    def reset(self) -> None:
        pass


def test_health_is_not_serving_while_a_step_hangs():
    async def scenario():
        servicer = health.aio.HealthServicer()
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        inner = StuckEngine()
        engine = MeteredEngine(inner, num_kv_blocks=1)
        watch = asyncio.ensure_future(_watch_progress(engine, servicer, hang_s=0.2))

        async def status():
            reply = await servicer.Check(health_pb2.HealthCheckRequest(), None)
            return reply.status

        results: list[StepResult] = []
        step = asyncio.ensure_future(asyncio.to_thread(engine.submit, StepPlan(0), results.append))
        await asyncio.sleep(0.1)
        assert await status() == health_pb2.HealthCheckResponse.SERVING  # not long yet
        await asyncio.sleep(0.4)
        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
        inner.release.set()
        await step
        assert [r.step_id for r in results] == [0]
        await asyncio.sleep(0.2)
        assert await status() == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()

    asyncio.run(scenario())


def test_the_hang_flag_and_its_off_switch():
    from sarathi_serve.worker.config import WorkerConfig

    assert WorkerConfig.from_args(["--hang-s", "30"]).hang_s == 30.0
    servicer = health.aio.HealthServicer()
    engine = MeteredEngine(StuckEngine(), num_kv_blocks=1)
    # 0: never watched (returns at once instead of looping)
    asyncio.run(asyncio.wait_for(_watch_progress(engine, servicer, hang_s=0.0), 1.0))
