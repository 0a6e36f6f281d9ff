"""`python -m sarathi_serve.worker`: load the model and attach to the scheduler."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import torch
from grpc_health.v1.health import aio as health_aio

from sarathi_serve.common.auth import InternalToken
from sarathi_serve.common.grpc_server import SERVER_OPTIONS, add_health_and_reflection, set_serving
from sarathi_serve.common.logs import setup_logging
from sarathi_serve.common.metrics import serve_metrics
from sarathi_serve.worker.attach import attach_forever
from sarathi_serve.worker.config import WorkerConfig
from sarathi_serve.worker.group import start_engine, start_stage
from sarathi_serve.worker.metrics import MeteredEngine, stage_registry
from sarathi_serve.worker.micro_batches import follow_stages

log = logging.getLogger("sarathi_serve.worker")
T = TypeVar("T")


class ModelThread:
    """The one thread of this process that runs torch: it loads the model and runs every
    step. libgomp keeps a thread pool per thread that starts parallel regions; with a
    second pool it manages more threads than there are cores and throttles its
    spin-waits, so every barrier of a step sleeps and wakes (steps ran 1.3-1.4x slower,
    measured, when the model was loaded on the main thread and run on another)."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(fn, *args)
        )


async def serve(config: WorkerConfig) -> None:
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    model_thread = ModelThread()
    if config.pipeline_stage > 0:
        return await serve_stage(config, model_thread)
    engine, runner, stop_group = await model_thread.run(start_engine, config)
    geometry = runner.geometry
    metered = MeteredEngine(engine, geometry.num_kv_blocks)
    serve_metrics(metered.registry, config.host, config.metrics_port)
    worker_id = config.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    # The health server answers on its own port; the model runs in a thread.
    server = grpc.aio.server(options=SERVER_OPTIONS)
    health = add_health_and_reflection(server, [])
    server.add_insecure_port(f"{config.host}:{config.port}")
    await server.start()
    await set_serving(health, [], True)
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "worker %s ready (health on %s:%d, %d torch threads); attaching to %s",
        worker_id,
        config.host,
        config.port,
        torch.get_num_threads(),
        config.scheduler_addr,
    )
    watch = asyncio.ensure_future(_watch_progress(metered, health, config.hang_s))
    try:
        await model_thread.run(
            attach_forever,
            metered,
            config.scheduler_addrs,
            worker_id,
            config.model,
            geometry,
            stop,
            InternalToken.from_env(),
        )
    finally:
        watch.cancel()
        stop_group()
        await server.stop(grace=0.5)


async def serve_stage(config: WorkerConfig, model_thread: ModelThread) -> None:
    """A later pipeline stage of a group spread over pods: it computes what stage 0 sends
    it until the group stops (or breaks: the process exits, its pod restarts, and with
    it the group, e.g. a LeaderWorkerSet's RecreateGroupOnPodRestart)."""
    stage, stop_group = await model_thread.run(start_stage, config)
    registry = stage_registry(config.pipeline_stage, config.pipeline_parallel_size)
    serve_metrics(registry, config.host, config.metrics_port)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    health = add_health_and_reflection(server, [])
    server.add_insecure_port(f"{config.host}:{config.port}")
    await server.start()
    await set_serving(health, [], True)
    log.info("pipeline stage %d of %d ready", config.pipeline_stage, config.pipeline_parallel_size)
    try:
        await model_thread.run(follow_stages, stage)
    finally:
        stop_group()
        await server.stop(grace=0.5)


async def _watch_progress(
    engine: MeteredEngine, health: health_aio.HealthServicer, hang_s: float
) -> None:
    """Health follows progress: NOT_SERVING while a step has run longer than `hang_s`."""
    if not hang_s:
        return
    serving = True
    while True:
        await asyncio.sleep(min(1.0, hang_s / 4))
        running_s = engine.running_for(time.monotonic())
        if serving == (running_s <= hang_s):
            continue
        serving = not serving
        if not serving:
            log.error("a step has run %.0fs (> %gs): health NOT_SERVING", running_s, hang_s)
        await set_serving(health, [], serving)


def main(argv: list[str] | None = None) -> None:
    setup_logging("worker")
    asyncio.run(serve(WorkerConfig.from_args(argv)))


if __name__ == "__main__":
    main()
