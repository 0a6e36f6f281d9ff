"""Control-plane cost: how many iterations per second the scheduler sustains
when the worker computes nothing (`--null-model`), at several numbers of
running requests, with Redis persistence off and on.

    sarathi-serve bench control-plane [--running 1,64,256] [--step-ms 0,10] [--seconds 5]
                                      [--json PATH]

Real processes and real gRPC: a scheduler, a null worker, a real redis-server,
and an in-process gateway session (the gateway's own client). With a worker
that answers at once (step 0 ms), an iteration's whole wall time is control plane:
plan, gRPC both ways, the Redis round trip, token events to the gateway. With a
worker whose steps take as long as an accelerator's (`--null-step-ms`), what
matters is the control plane the worker still sees between its steps (`exposed`:
wall time per iteration minus the step; `worker wait`: the worker's own count),
since the scheduler plans step n+1 while the worker computes step n.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from sarathi_serve.common import probes
from sarathi_serve.common.net import free_port
from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.gateway.scheduler_client import SchedulerClient

PROMPT = list(range(10, 18))  # 8 tokens


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--running", default="1,64,256", help="numbers of running requests")
    p.add_argument(
        "--step-ms", default="0,10", help="the null worker's step times (0: answers at once)"
    )
    p.add_argument("--seconds", type=float, default=5.0, help="measuring window per point")
    p.add_argument("--json", type=Path, default=None)


class Services:
    """redis-server (optional), a scheduler and its null workers, as processes."""

    def __init__(
        self, with_redis: bool, max_running: int, step_ms: float = 0.0, num_workers: int = 1
    ):
        self.tmp = tempfile.TemporaryDirectory()
        self.processes: list[subprocess.Popen[bytes]] = []
        args = []
        if with_redis:
            port = free_port()
            self._spawn(
                [
                    shutil.which("redis-server") or "redis-server",
                    "--port",
                    str(port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    self.tmp.name,
                ]
            )
            args = ["--redis-url", f"redis://127.0.0.1:{port}/0"]
        self.addr = f"127.0.0.1:{free_port()}"
        self.scheduler_pid = self._spawn(
            [
                sys.executable,
                "-m",
                "sarathi_serve.scheduler",
                "--port",
                self.addr.split(":")[1],
                "--token-budget",
                str(4 * max_running),
                "--max-num-seqs",
                str(max_running),
                "--max-num-waiting",
                str(4 * max_running),
                *args,
            ]
        )
        for _ in range(num_workers):
            self._spawn(
                [
                    sys.executable,
                    "-m",
                    "sarathi_serve.worker",
                    "--null-model",
                    "--null-step-ms",
                    str(step_ms),
                    "--scheduler-addr",
                    self.addr,
                    "--port",
                    str(free_port()),
                ]
            )
        deadline = time.monotonic() + 60 + 10 * num_workers  # each imports torch
        while True:
            try:
                stats = probes.scheduler_stats(self.addr, timeout=1.0)
                if stats.is_leader and stats.num_workers >= num_workers:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the scheduler or its null workers did not start")
            time.sleep(0.2)

    def _spawn(self, argv: list[str]) -> int:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(process)
        return process.pid

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            process.wait(10)
        self.tmp.cleanup()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    addr: str, num_running: int, seconds: float, scheduler_pid: int
) -> dict[str, float]:
    client = SchedulerClient([addr], f"bench-{num_running}")
    client.start()
    sampling = SamplingParams(temperature=0.0, max_tokens=1 << 19, ignore_eos=True)
    queues = [
        await client.submit(f"r{num_running}-{i}", PROMPT, sampling) for i in range(num_running)
    ]

    async def drain(queue: asyncio.Queue) -> None:  # type: ignore[type-arg]
        while True:
            await queue.get()

    drains = [asyncio.create_task(drain(q)) for q in queues]
    while (await asyncio.to_thread(probes.scheduler_stats, addr)).num_running < num_running:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # past the prefills
    before = await asyncio.to_thread(probes.scheduler_stats, addr, 2.0, 1)
    cpu_before = cpu_seconds(scheduler_pid)
    await asyncio.sleep(seconds)
    cpu = cpu_seconds(scheduler_pid) - cpu_before
    after = await asyncio.to_thread(probes.scheduler_stats, addr, 10.0, 0)
    first = before.iterations[-1].step_id
    window = [it for it in after.iterations if it.step_id >= first]
    # The iterations' own start times: the GetStats calls (which run on the scheduler's
    # loop) fall outside the window.
    elapsed = window[-1].start_time - window[0].start_time
    window = window[1:]
    for i in range(num_running):
        client.abort(f"r{num_running}-{i}")
    for task in drains:
        task.cancel()
    await client.close()
    while (await asyncio.to_thread(probes.scheduler_stats, addr)).num_running:
        await asyncio.sleep(0.05)
    n = max(1, len(window))
    return {
        "running": num_running,
        "iterations_per_s": len(window) / elapsed,
        "ms_per_iteration": 1e3 * elapsed / n,
        # the scheduler's own CPU per iteration: what it costs, whatever its neighbours
        # on a small machine (the client, the worker, Redis) take from the cores
        "scheduler_cpu_ms": 1e3 * cpu / max(1, round(seconds * len(window) / elapsed)),
        "worker_ms": sum(it.execution_ms for it in window) / n,
        "scheduling_ms": sum(it.scheduling_ms for it in window) / n,
        "persist_ms": sum(it.persist_ms for it in window) / n,
        "worker_wait_ms": sum(it.worker_wait_ms for it in window) / n,
    }


def exposed_ms(row: dict[str, float]) -> float:
    """Wall time per iteration that is not the worker's step: the control plane the
    worker's steps do not hide."""
    return max(0.0, row["ms_per_iteration"] - row["worker_ms"])


def run(args: argparse.Namespace) -> int:
    loads = [int(x) for x in args.running.split(",")]
    step_times = [float(x) for x in args.step_ms.split(",")]
    rows = []
    print(
        f"{'step':>5} {'redis':>5} {'running':>7} {'iter/s':>7} {'ms/iter':>8} "
        f"{'exposed':>8} {'wait':>6} {'sched cpu':>9} {'worker':>7} {'plan':>6} {'redis':>6}"
        "   (ms per iteration)"
    )
    for step_ms in step_times:
        for with_redis in (False, True):
            services = Services(with_redis, max(loads), step_ms)
            try:
                for num_running in loads:
                    row = asyncio.run(
                        measure(services.addr, num_running, args.seconds, services.scheduler_pid)
                    )
                    row.update(redis=with_redis, step_ms=step_ms, exposed_ms=exposed_ms(row))
                    rows.append(row)
                    print(_format(row), flush=True)
            finally:
                services.stop()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "config": {"running": loads, "step_ms": step_times, "seconds": args.seconds},
                    "environment": {
                        "python": platform.python_version(),
                        "machine": platform.machine(),
                        "cpus": os.cpu_count(),
                    },
                    "results": rows,
                },
                indent=2,
            )
        )
    for step_ms in step_times:
        worst = max(
            (r for r in rows if r["redis"] and r["step_ms"] == step_ms), key=lambda r: r["running"]
        )
        print(
            f"step {step_ms:g} ms, {worst['running']} running, Redis on: "
            f"{worst['ms_per_iteration']:.2f} ms/iteration, {worst['exposed_ms']:.2f} ms of it "
            f"outside the worker's step; {worst['scheduler_cpu_ms']:.2f} ms of scheduler CPU"
        )
    return 0


def _format(row: dict[str, float]) -> str:
    return (
        f"{row['step_ms']:>5g} {'on' if row['redis'] else 'off':>5} {row['running']:>7} "
        f"{row['iterations_per_s']:>7.0f} {row['ms_per_iteration']:>8.2f} "
        f"{row['exposed_ms']:>8.2f} {row['worker_wait_ms']:>6.2f} "
        f"{row['scheduler_cpu_ms']:>9.2f} {row['worker_ms']:>7.2f} "
        f"{row['scheduling_ms']:>6.2f} {row['persist_ms']:>6.2f}"
    )
