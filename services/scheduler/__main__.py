"""`python -m sarathi_serve.scheduler`: run the scheduler service.

With Redis, several schedulers may run: the one holding the lease leads, the
others wait as standbys and take over (recovering the in-flight requests) when
the lease expires. A leader that loses its lease exits, so that its supervisor
restarts it as a standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable

import grpc
import redis.asyncio as aioredis
from grpc_health.v1.health import aio as health_aio
from redis.exceptions import RedisError

from sarathi_serve.common.auth import TOKEN_ENV, BearerInterceptor, InternalToken
from sarathi_serve.common.grpc_server import (
    SERVER_OPTIONS,
    add_health_and_reflection,
    set_serving,
)
from sarathi_serve.common.logs import setup_logging
from sarathi_serve.common.metrics import serve_metrics
from sarathi_serve.scheduler.config import SchedulerConfig
from sarathi_serve.scheduler.core import SchedulerCore
from sarathi_serve.scheduler.front import SchedulerFront
from sarathi_serve.scheduler.lease import LeaderLease
from sarathi_serve.scheduler.metrics import SchedulerMetrics
from sarathi_serve.scheduler.policies import Policy
from sarathi_serve.scheduler.policies.sarathi import SarathiPolicy
from sarathi_serve.scheduler.server import (
    SERVICE_NAME,
    SchedulerServicer,
    add_scheduler_service,
)
from sarathi_serve.scheduler.stats import StatsRing
from sarathi_serve.scheduler.store import Fenced, RedisStore

log = logging.getLogger("sarathi_serve.scheduler")
EXIT_LOST_LEASE = 75


async def serve(config: SchedulerConfig) -> int:
    scheduler_id = config.scheduler_id or f"{socket.gethostname()}-{os.getpid()}"
    servicer = SchedulerServicer(scheduler_id)
    metrics = SchedulerMetrics(scheduler_id)
    metrics.watch(lambda: servicer.front)
    serve_metrics(metrics.registry, config.host, config.metrics_port)
    token = InternalToken.from_env()
    if not token.enabled:
        log.warning("no internal token (%s): the scheduler's port is open to anyone", TOKEN_ENV)
    auth = BearerInterceptor(token, "the internal token")
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[auth])
    add_scheduler_service(server, servicer)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    address = f"{config.host}:{config.port}"
    server.add_insecure_port(address)
    await server.start()
    await set_serving(health, [SERVICE_NAME], False)  # ready only while leading
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        return await _lead(config, scheduler_id, servicer, health, address, stop, metrics)
    finally:
        await server.stop(grace=1.0)


async def _lead(
    config: SchedulerConfig,
    scheduler_id: str,
    servicer: SchedulerServicer,
    health: health_aio.HealthServicer,
    address: str,
    stop: asyncio.Event,
    metrics: SchedulerMetrics,
) -> int:
    """Waits for the lease (with Redis), then leads until stopped or fenced off;
    returns the exit code."""
    store, lease = None, None
    if config.redis_url:
        client = aioredis.from_url(config.redis_url, socket_timeout=5, socket_connect_timeout=5)
        lease = LeaderLease(client, config.redis_prefix, scheduler_id, config.lease_ttl_ms)
        log.info("scheduler %s on %s: standby until it holds the lease", scheduler_id, address)
        epoch = await _wait_for_lease(lease, stop)
        if epoch is None:
            return 0
        store = RedisStore(client, prefix=config.redis_prefix, epoch=epoch)
    front = await _take_over(config, store, metrics)
    servicer.activate(front, 0 if store is None else store.epoch)
    await set_serving(health, [SERVICE_NAME], True)
    log.info(
        "scheduler %s leads on %s (epoch %d, policy %s%s, token budget %d, redis %s, "
        "tenant weights %s)",
        *(scheduler_id, address, servicer.epoch, front.policy.name, _options(front.policy)),
        front.policy.token_budget,
        config.redis_url or "off",
        config.tenant_weights or "equal",
    )
    tasks = {asyncio.ensure_future(front.run()), asyncio.ensure_future(stop.wait())}
    if lease is not None:
        assert store is not None
        tasks.add(asyncio.ensure_future(_keep_lease(lease, store, servicer)))
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    servicer.deactivate()  # new calls: UNAVAILABLE, as a standby answers
    front.close()  # the streams end cleanly, before the server stops
    if stop.is_set():
        if lease is not None:
            await _quietly(lease.release())
        return 0
    return _exit_code_of(done.pop())


async def _take_over(
    config: SchedulerConfig, store: RedisStore | None, metrics: SchedulerMetrics
) -> SchedulerFront:
    """The front of a new leader, with the previous leader's requests from Redis."""

    def make_core() -> SchedulerCore:  # one per model replica (worker)
        policy = config.make_policy()
        return SchedulerCore(
            policy,
            max_num_waiting=config.max_num_waiting,
            watermark=config.watermark,
            prefix_caching=config.prefix_caching,
            tenant_weights=config.tenant_weights_by_name(),
        )

    front = SchedulerFront(
        make_core,
        store,
        StatsRing(config.max_stats),
        session_grace_s=config.session_grace_s,
        metrics=metrics,
        pace_plans=config.pace_plans,
        worker_stall_s=config.worker_stall_s,
    )
    if store is not None:
        front.recover(await store.load_inflight())
    return front


def _exit_code_of(finished: asyncio.Future[object]) -> int:
    """A leader that lost its lease exits, so that its supervisor restarts it as a standby."""
    try:
        finished.result()
    except Fenced as exc:
        log.error("%s: exiting; a supervisor restarts this scheduler as a standby", exc)
        return EXIT_LOST_LEASE
    log.error("lost the leader lease: exiting; a supervisor restarts this scheduler as a standby")
    return EXIT_LOST_LEASE


async def _wait_for_lease(lease: LeaderLease, stop: asyncio.Event) -> int | None:
    poll_s = lease.ttl_ms / 3000
    while not stop.is_set():
        try:
            epoch = await lease.try_acquire()
            if epoch is not None:
                return epoch
        except RedisError as exc:
            log.warning("redis unreachable while waiting for the lease: %s", exc)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), poll_s)
    return None


async def _keep_lease(lease: LeaderLease, store: RedisStore, servicer: SchedulerServicer) -> None:
    """Returns when another scheduler holds the lease. Rides out Redis outages:
    a lease that expired meanwhile but is still free is taken again, with a new
    epoch for the writes to come (writes are fenced, so nothing stale lands)."""
    while True:
        await asyncio.sleep(lease.ttl_ms / 3000)
        try:
            if await lease.renew():
                continue
            epoch = await lease.try_acquire()
            if epoch is None:
                return
            log.warning(
                "the lease expired during an outage and was free: leading on at epoch %d", epoch
            )
            store.epoch = servicer.epoch = epoch
        except RedisError as exc:
            log.warning("lease renewal failed (%s); retrying", exc)


async def _quietly(coro: Awaitable[object]) -> None:
    with contextlib.suppress(RedisError):
        await coro


def main(argv: list[str] | None = None) -> None:
    setup_logging("scheduler")
    sys.exit(asyncio.run(serve(SchedulerConfig.from_args(argv))))


def _options(policy: Policy) -> str:
    """A sarathi policy's options other than the defaults, as ` [name=value, ...]`."""
    options = policy.options() if isinstance(policy, SarathiPolicy) else {}
    defaults = SarathiPolicy().options()
    named = ", ".join(f"{k}={v:g}" for k, v in options.items() if v != defaults[k])
    return f" [{named}]" if named else ""


if __name__ == "__main__":
    main()
