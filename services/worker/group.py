"""Builds the worker's engine: one process, or a tensor-parallel group of them.

Rank 0 is the process that talks to the scheduler; ranks 1..N-1 are child
processes that replay its commands (see `parallel.py`). A child whose parent
dies exits at once rather than wait on the group forever.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable

import torch

from sarathi_serve.common.logs import setup_logging
from sarathi_serve.common.models import resolve_model
from sarathi_serve.common.net import free_port
from sarathi_serve.worker.config import WorkerConfig
from sarathi_serve.worker.engine import Runner, WorkerEngine
from sarathi_serve.worker.model_runner import ModelRunner
from sarathi_serve.worker.null_runner import NullRunner
from sarathi_serve.worker.parallel import (
    Engine,
    GroupLeader,
    TensorParallel,
    follow,
    init_group,
    shared_seed,
)

log = logging.getLogger(__name__)


def start_engine(config: WorkerConfig) -> tuple[Engine, Runner, Callable[[], None]]:
    """Loads the model (across the group when tensor_parallel_size > 1).

    Returns rank 0's engine, its runner (whose geometry the scheduler is told), and a
    function that stops the group.
    """
    size = config.tensor_parallel_size
    if config.null_model:
        null = NullRunner(step_ms=config.null_step_ms)
        return WorkerEngine(null), null, lambda: None
    if size == 1:
        runner = build_runner(config, TensorParallel(), config.seed)
        return WorkerEngine(runner), runner, lambda: None
    init_method = f"tcp://127.0.0.1:{free_port()}"
    context = mp.get_context("spawn")
    followers = [
        context.Process(
            target=_follower_main,
            args=(config, TensorParallel(rank, size), init_method, os.getpid()),
            daemon=True,
        )
        for rank in range(1, size)
    ]
    for process in followers:
        process.start()
    tp = TensorParallel(0, size)
    init_group(tp, init_method, config.device)
    runner = build_runner(config, tp, shared_seed(config.seed))
    leader = GroupLeader(WorkerEngine(runner))

    def stop() -> None:
        leader.stop()
        for process in followers:
            process.join(timeout=10)

    return leader, runner, stop


def build_runner(config: WorkerConfig, tp: TensorParallel, seed: int | None) -> ModelRunner:
    device = f"cuda:{tp.rank}" if config.device == "cuda" and tp.enabled else config.device
    return ModelRunner(
        resolve_model(config.model),
        kv_cache_bytes=config.kv_cache_bytes,
        dtype=config.torch_dtype,
        gpu_memory_utilization=config.gpu_memory_utilization,
        block_size=config.block_size,
        device=device,
        seed=seed,
        attention_backend=config.attention_backend,
        linear_backend=config.linear_backend,
        tp=tp,
        small_step_tokens=config.small_step_tokens,
    )


def _follower_main(config: WorkerConfig, tp: TensorParallel, init_method: str, parent: int) -> None:
    setup_logging(f"worker-rank{tp.rank}")
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    init_group(tp, init_method, config.device)
    runner = build_runner(config, tp, shared_seed(None))
    follow(WorkerEngine(runner))


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
