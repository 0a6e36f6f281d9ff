"""`python -m sarathi_serve.scheduler`: run the scheduler service."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
import redis.asyncio as aioredis

from sarathi_serve.common.grpc_server import CHANNEL_OPTIONS, add_health_and_reflection, set_serving
from sarathi_serve.common.logs import setup_logging
from sarathi_serve.protocol import scheduler_pb2, scheduler_pb2_grpc
from sarathi_serve.scheduler.config import SchedulerConfig
from sarathi_serve.scheduler.core import SchedulerCore
from sarathi_serve.scheduler.loop import IterationLoop
from sarathi_serve.scheduler.policies import make_policy
from sarathi_serve.scheduler.server import SchedulerServicer
from sarathi_serve.scheduler.sessions import SessionHub
from sarathi_serve.scheduler.stats import StatsRing
from sarathi_serve.scheduler.store import RedisStore

log = logging.getLogger("sarathi_serve.scheduler")
SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name


async def serve(config: SchedulerConfig) -> None:
    policy = make_policy(
        config.policy, token_budget=config.token_budget, max_num_seqs=config.max_num_seqs
    )
    core = SchedulerCore(policy, max_num_waiting=config.max_num_waiting, watermark=config.watermark)
    store = None
    if config.redis_url:
        client = aioredis.from_url(config.redis_url, socket_timeout=5, socket_connect_timeout=5)
        await client.ping()
        store = RedisStore(client, prefix=config.redis_prefix)
    loop = IterationLoop(core, SessionHub(), store, StatsRing(config.max_stats))
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(SchedulerServicer(loop), server)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    address = f"{config.host}:{config.port}"
    server.add_insecure_port(address)
    await server.start()
    runner = asyncio.create_task(loop.run())
    await set_serving(health, [SERVICE_NAME], True)
    log.info(
        "scheduler serving on %s (policy %s, token budget %d, redis %s)",
        address,
        policy.name,
        policy.token_budget,
        config.redis_url or "off",
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    done, _ = await asyncio.wait(
        {runner, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED
    )
    if runner in done:
        runner.result()  # re-raise a crash of the loop
    runner.cancel()
    await server.stop(grace=1.0)


def main(argv: list[str] | None = None) -> None:
    setup_logging("scheduler")
    asyncio.run(serve(SchedulerConfig.from_args(argv)))


if __name__ == "__main__":
    main()
