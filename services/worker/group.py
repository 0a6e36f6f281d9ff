"""Builds the worker's engine: one process, or a group of them (tensor-parallel ranks,
pipeline stages, or both: `parallel.py`, `pipeline.py`).

Rank 0 is the process that talks to the scheduler; ranks 1..N-1 are child
processes that replay its commands (see `parallel.py`). A child whose parent
dies exits at once rather than wait on the group forever. Global rank r is
pipeline stage r // T, tensor-parallel rank r % T (T = tensor_parallel_size).

A group may also span machines, one per pipeline stage (`--pipeline-stage S
--group-addr HOST:PORT`, e.g. the pods of a LeaderWorkerSet): the process of stage S
runs ranks S * T .. S * T + T - 1 (the first itself, the others as its children), all
meet at stage 0's address, and only stage 0 attaches to the scheduler.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

import torch

from sarathi_serve.common.logs import setup_logging
from sarathi_serve.common.models import resolve_model
from sarathi_serve.common.net import free_port
from sarathi_serve.worker.config import WorkerConfig
from sarathi_serve.worker.engine import Runner, WorkerEngine
from sarathi_serve.worker.micro_batches import (
    PipelineLeader,
    StageLinks,
    StageRank,
    follow_stages,
)
from sarathi_serve.worker.model_runner import ModelRunner
from sarathi_serve.worker.null_runner import NullRunner
from sarathi_serve.worker.parallel import (
    GroupLeader,
    TensorParallel,
    follow,
    init_group,
    shared_seed,
)
from sarathi_serve.worker.pipeline import PipelineStage, StageForward, stage_groups
from sarathi_serve.worker.submit import Engine

log = logging.getLogger(__name__)


def start_engine(config: WorkerConfig) -> tuple[Engine, Runner, Callable[[], None]]:
    """Loads the model (across the group when it has several ranks).

    Returns rank 0's engine, its runner (whose geometry the scheduler is told), and a
    function that stops the group.
    """
    size = config.tensor_parallel_size * config.pipeline_parallel_size
    if config.null_model:
        null = NullRunner(step_ms=config.null_step_ms)
        return WorkerEngine(null), null, lambda: None
    if size == 1:
        runner = build_runner(config, TensorParallel(), PipelineStage(), config.seed)
        return WorkerEngine(runner), runner, lambda: None
    followers, init_method = _spawn_followers(config)
    runner, links = _join_group(config, 0, init_method)
    leader: GroupLeader | PipelineLeader
    if links is None:
        leader = GroupLeader(WorkerEngine(runner))
    else:
        leader = PipelineLeader(_stage_rank(runner, links))
    return leader, runner, _stopper(leader.stop, followers)


def start_stage(config: WorkerConfig) -> tuple[StageRank, Callable[[], None]]:
    """A group spread over pods: this process hosts pipeline stage `config.pipeline_stage`
    > 0 (its first tensor-parallel rank, the others its children), joined at
    `config.group_addr`. `follow_stages` on the returned rank serves it."""
    followers, init_method = _spawn_followers(config)
    runner, links = _join_group(config, config.local_ranks[0], init_method)
    assert links is not None
    return _stage_rank(runner, links), _stopper(lambda: None, followers)


def _spawn_followers(config: WorkerConfig) -> tuple[list[BaseProcess], str]:
    """Starts this process's other ranks; returns them and where the group meets."""
    addr = config.group_addr or f"127.0.0.1:{free_port()}"
    init_method = f"tcp://{addr}"
    context = mp.get_context("spawn")
    followers: list[BaseProcess] = [
        context.Process(
            target=_follower_main, args=(config, rank, init_method, os.getpid()), daemon=True
        )
        for rank in config.local_ranks[1:]
    ]
    for process in followers:
        process.start()
    return followers, init_method


def _stopper(stop_leader: Callable[[], None], followers: list[BaseProcess]) -> Callable[[], None]:
    def stop() -> None:
        stop_leader()
        for process in followers:
            process.join(timeout=10)
        torch.distributed.destroy_process_group()  # a new group may start in this process

    return stop


def _join_group(
    config: WorkerConfig, rank: int, init_method: str
) -> tuple[ModelRunner, StageLinks | None]:
    """Joins the group as `rank` and loads this rank's part of the model; with pipeline
    stages, also the links its micro-batches travel on."""
    tp_size, pp_size = config.tensor_parallel_size, config.pipeline_parallel_size
    init_group(rank, tp_size * pp_size, init_method, config.device)
    stage = PipelineStage.of_rank(rank, pp_size, tp_size, config.layer_split)
    tp = TensorParallel(stage.tp_rank, tp_size, stage_groups(stage))
    links = StageLinks(stage) if stage.enabled else None
    seed = shared_seed(config.seed if rank == 0 else None)
    local_rank = rank - config.local_ranks[0]  # its device on this machine
    return build_runner(config, tp, stage, seed, local_rank), links


def _stage_rank(runner: ModelRunner, links: StageLinks) -> StageRank:
    assert isinstance(runner.forward, StageForward)
    return StageRank(WorkerEngine(runner, retry_alone=False), runner.forward, links)


def build_runner(
    config: WorkerConfig,
    tp: TensorParallel,
    pp: PipelineStage,
    seed: int | None,
    local_rank: int = 0,
) -> ModelRunner:
    grouped = config.device == "cuda" and (tp.enabled or pp.enabled)
    device = f"cuda:{local_rank}" if grouped else config.device
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
        pp=pp,
        small_step_tokens=config.small_step_tokens,
    )


def _follower_main(config: WorkerConfig, rank: int, init_method: str, parent: int) -> None:
    setup_logging(f"worker-rank{rank}")
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    runner, links = _join_group(config, rank, init_method)
    if links is None:
        follow(WorkerEngine(runner))
    else:
        follow_stages(_stage_rank(runner, links))


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
