"""Null fleets: how close the schedulers come to the ideal iteration rate of their workers.

    sarathi-serve bench fleet [--replicas 1,2,4,8] [--shards 1] [--running 128]
                              [--step-ms 15] [--seconds 8] [--json PATH]

For each R in --replicas: K shards (--shards; each a redis-server, a scheduler and R/K
null workers whose steps take --step-ms, like an accelerator's), R x --running
requests decoding at once, routed to the shards by the gateway's own shard score
(`gateway/shards.py`). A replica's ideal is one iteration per step; the table gives
each replica's achieved rate as a fraction of it (min and mean over replicas), the
worker's wait for its next plan, and each scheduler's CPU per iteration and share of
a core.

The consumer is lean on purpose: a Session per shard that counts tokens (no queue per
request, no detokenizing, no HTTP), so the figure is the control plane's (scheduler,
gRPC, Redis), not the gateway's, which scales out by replicas of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from sarathi_serve.bench.control_plane import PROMPT, Services, cpu_seconds
from sarathi_serve.common import probes
from sarathi_serve.common.convert import sampling_to_pb
from sarathi_serve.common.grpc_server import CHANNEL_OPTIONS
from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.gateway.shards import ShardSet
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc

MAX_TOKENS = 1 << 19  # decoding for the whole window


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replicas", default="1,2,4,8", help="numbers of replicas (null workers)")
    p.add_argument("--shards", type=int, default=1, help="scheduler sets sharing the replicas")
    p.add_argument("--running", type=int, default=128, help="requests decoding per replica")
    p.add_argument("--step-ms", type=float, default=15.0, help="each null worker's step time")
    p.add_argument("--seconds", type=float, default=8.0, help="measuring window per point")
    p.add_argument("--json", type=Path, default=None)


class LeanSession:
    """A gateway's Session with one shard that only counts the tokens it receives; what
    ShardSet reads of a SchedulerClient (ready, num_workers, outstanding_tokens)."""

    def __init__(self, addr: str, gateway_id: str):
        self.addr, self.gateway_id = addr, gateway_id
        self.ready = False
        self.num_workers: int | None = None
        self.outstanding_tokens = 0
        self.num_tokens = 0
        self._outbox: asyncio.Queue[pb.SessionRequest | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._outbox.put_nowait(
            pb.SessionRequest(hello=pb.SessionHello(gateway_id=self.gateway_id))
        )
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async def requests() -> AsyncIterator[pb.SessionRequest]:
            while (message := await self._outbox.get()) is not None:
                yield message

        async with grpc.aio.insecure_channel(self.addr, options=CHANNEL_OPTIONS) as channel:
            async for batch in pb_grpc.SchedulerStub(channel).Session(requests()):
                self.ready = True
                if batch.HasField("num_workers"):
                    self.num_workers = batch.num_workers
                self.num_tokens += len(batch.token_ids)

    def submit(self, request_id: str, prompt: list[int], sampling: pb.SamplingParams) -> None:
        self.outstanding_tokens += len(prompt) + sampling.max_tokens
        submit = pb.Submit(request_id=request_id, prompt_token_ids=prompt, sampling=sampling)
        self._outbox.put_nowait(pb.SessionRequest(submit=submit))

    def abort(self, request_id: str) -> None:
        self._outbox.put_nowait(pb.SessionRequest(abort=pb.Abort(request_id=request_id)))

    async def close(self) -> None:
        self._outbox.put_nowait(None)
        if self._task is not None:
            self._task.cancel()


async def measure(
    shards: list[Services], running: int, step_ms: float, seconds: float
) -> dict[str, Any]:
    sessions = [LeanSession(s.addr, f"fleet-{i}") for i, s in enumerate(shards)]
    for session in sessions:
        session.start()
    while not all(s.ready for s in sessions):
        await asyncio.sleep(0.05)
    router = ShardSet(sessions)  # type: ignore[arg-type]
    sampling = sampling_to_pb(
        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    )
    num_replicas = sum(s.num_workers or 0 for s in sessions)
    placed: list[tuple[LeanSession, str]] = []
    for i in range(num_replicas * running):
        session = sessions[router.pick(PROMPT)]
        session.submit(f"fleet-{i}", PROMPT, sampling)
        placed.append((session, f"fleet-{i}"))
    while sum(await asyncio.gather(*(_running(s.addr) for s in shards))) < len(placed):
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # past the prefills
    t0, cpu0, tokens0 = _counters(shards, sessions)
    await asyncio.sleep(seconds)
    t1, cpu1, tokens1 = _counters(shards, sessions)
    stats = [await asyncio.to_thread(probes.scheduler_stats, s.addr, 10.0, 0) for s in shards]
    for session, request_id in placed:
        session.abort(request_id)
    for session in sessions:
        await session.close()
    return _row(stats, t0, t1, cpu1, cpu0, tokens1 - tokens0, step_ms, router.num_picked)


def _counters(
    shards: list[Services], sessions: list[LeanSession]
) -> tuple[float, list[float], int]:
    """Now, each scheduler's CPU seconds so far, and the tokens received so far."""
    cpu = [cpu_seconds(s.scheduler_pid) for s in shards]
    return time.time(), cpu, sum(s.num_tokens for s in sessions)


async def _running(addr: str) -> int:
    return (await asyncio.to_thread(probes.scheduler_stats, addr, 5.0, 1)).num_running


def _row(stats: list[Any], t0: float, t1: float, cpu1: list[float], cpu0: list[float],
         num_tokens: int, step_ms: float, picked: list[int]) -> dict[str, Any]:  # fmt: skip
    seconds, ideal = t1 - t0, 1e3 / step_ms
    rates, waits, cpu_ms, shares = [], [], [], []
    for reply, a, b in zip(stats, cpu0, cpu1, strict=True):
        per_replica: dict[int, list[Any]] = defaultdict(list)
        for it in reply.iterations:
            if t0 <= it.start_time < t1:
                per_replica[it.replica].append(it)
        for its in per_replica.values():
            rates.append(len(its) / seconds / ideal)
            waits.append(sum(it.worker_wait_ms for it in its) / len(its))
        num_iterations = sum(len(its) for its in per_replica.values())
        cpu_ms.append(1e3 * (b - a) / max(num_iterations, 1))
        shares.append((b - a) / seconds)
    return {
        "replicas": len(rates),
        "shards": len(stats),
        "ideal_rate_min": min(rates),
        "ideal_rate_mean": sum(rates) / len(rates),
        "worker_wait_ms": sum(waits) / len(waits),
        "scheduler_cpu_ms_per_iteration": cpu_ms,
        "scheduler_cpu_share": shares,
        "tokens_per_s": num_tokens / seconds,
        "requests_per_shard": picked,
    }


def run(args: argparse.Namespace) -> int:
    rows = []
    print(f"{'replicas':>8} {'shards':>6} {'ideal min':>9} {'mean':>5} {'wait ms':>7} "
          f"{'sched cpu ms/it':>15} {'core':>5} {'tok/s':>7}  requests per shard")  # fmt: skip
    for num_replicas in [int(x) for x in args.replicas.split(",")]:
        if num_replicas % args.shards:
            raise SystemExit(f"--replicas {num_replicas} is not a multiple of --shards")
        per_shard = num_replicas // args.shards
        shards = [Services(True, args.running, args.step_ms, per_shard) for _ in range(args.shards)]
        try:
            row = asyncio.run(measure(shards, args.running, args.step_ms, args.seconds))
        finally:
            for services in shards:
                services.stop()
        row.update(running_per_replica=args.running, step_ms=args.step_ms)
        rows.append(row)
        print(_format(row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        environment = {"python": platform.python_version(), "cpus": os.cpu_count()}
        config = {k: v for k, v in vars(args).items() if k in ("replicas", "shards", "running",
                  "step_ms", "seconds")}  # fmt: skip
        report = {"config": config, "environment": environment, "results": rows}
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _format(row: dict[str, Any]) -> str:
    cpu = "/".join(f"{x:.2f}" for x in row["scheduler_cpu_ms_per_iteration"])
    share = "/".join(f"{x:.2f}" for x in row["scheduler_cpu_share"])
    return (
        f"{row['replicas']:>8} {row['shards']:>6} {row['ideal_rate_min']:>9.2f} "
        f"{row['ideal_rate_mean']:>5.2f} {row['worker_wait_ms']:>7.2f} {cpu:>15} {share:>5} "
        f"{row['tokens_per_s']:>7.0f}  {row['requests_per_shard']}"
    )
