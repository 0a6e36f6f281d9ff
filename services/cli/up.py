"""`sarathi-serve up`: start Redis, the scheduler, a worker and the gateway, and supervise them.

Children are started in their own session so that Ctrl-C reaches only this
supervisor, which then stops them role by role (gateways, workers, schedulers, Redis).
A child that exits unexpectedly is restarted; `status` shows the restarts.
`up_plan` turns the flags into the children, `up_supervisor` runs them.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from sarathi_serve.cli.up_plan import parse_variant, plan_children
from sarathi_serve.cli.up_supervisor import (
    Child,
    StartupError,
    records,
    start_all,
    stop_all,
    supervise,
)
from sarathi_serve.common.auth import TOKEN_ENV, InternalToken
from sarathi_serve.common.config import add_field_argument
from sarathi_serve.common.models import resolve_model
from sarathi_serve.common.run_records import (
    clear_system,
    default_run_dir,
    pid_alive,
    read_system,
    write_system,
)
from sarathi_serve.gateway.config import HELPS as GATEWAY_HELPS
from sarathi_serve.gateway.config import GatewayConfig
from sarathi_serve.scheduler.config import HELPS as SCHEDULER_HELPS
from sarathi_serve.scheduler.config import SchedulerConfig
from sarathi_serve.scheduler.policies import POLICIES
from sarathi_serve.worker import prepare_cpu_kernels
from sarathi_serve.worker.config import HELPS as WORKER_HELPS
from sarathi_serve.worker.config import WorkerConfig

# up's own: a fixed 1 GiB KV cache per worker (the worker's default, 0, sizes it from CUDA)
KV_CACHE_GB = 1.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`up`'s flags; those that set a service's field take its type, default and help."""
    add_field_argument(p, GatewayConfig, "model", GATEWAY_HELPS["model"])
    add_field_argument(p, GatewayConfig, "host", "address the gateway listens on")
    add_field_argument(p, GatewayConfig, "port", "gateway gRPC port")
    add_field_argument(p, GatewayConfig, "http_port", "gateway: " + GATEWAY_HELPS["http_port"])
    p.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        metavar="NAME=POLICY[:BUDGET][@WEIGHT]",
        help="A/B test: one scheduler set + worker per variant, routed by weight (repeat it)",
    )
    add_field_argument(
        p, GatewayConfig, "api_keys_file", "require these API keys (one per line) at the gateway"
    )
    add_field_argument(
        p, GatewayConfig, "salt_cache_per_api_key", GATEWAY_HELPS["salt_cache_per_api_key"]
    )
    add_field_argument(p, GatewayConfig, "drain_s", "gateway: " + GATEWAY_HELPS["drain_s"])
    add_field_argument(
        p,
        SchedulerConfig,
        "port",
        "scheduler gRPC port (next free if busy)",
        flag="--scheduler-port",
    )
    add_field_argument(p, WorkerConfig, "port", "worker health port", flag="--worker-port")
    add_field_argument(
        p, SchedulerConfig, "policy", SCHEDULER_HELPS["policy"], choices=sorted(POLICIES)
    )
    tuning = (
        "token_budget",
        "max_num_seqs",
        "target_tbt_ms",
        "target_tbt_factor",
        "batch_priority",
    )
    for name in (*tuning, "prefix_caching", "tenant_weights"):
        add_field_argument(p, SchedulerConfig, name, SCHEDULER_HELPS[name])
    p.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    add_field_argument(
        p, WorkerConfig, "kv_cache_gb", "KV cache of each worker", default=KV_CACHE_GB
    )
    add_field_argument(p, WorkerConfig, "num_threads", "worker: " + WORKER_HELPS["num_threads"])
    for name in ("tensor_parallel_size", "pipeline_parallel_size", "pipeline_layers"):
        add_field_argument(p, WorkerConfig, name, WORKER_HELPS[name])
    _add_topology_arguments(p)
    p.add_argument("--run-dir", type=Path, default=default_run_dir())


def _add_topology_arguments(p: argparse.ArgumentParser) -> None:
    """How many of each process: replicas, schedulers, shards, and null workers."""
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="model replicas (workers) per scheduler; new requests go to the least loaded",
    )
    p.add_argument(
        "--schedulers", type=int, default=1, help="scheduler processes: a leader and standbys (HA)"
    )
    p.add_argument(
        "--shards",
        type=int,
        default=1,
        help="scheduler sets per variant, each with its own --schedulers, --workers and Redis "
        "state; the gateway routes new requests between them by load and prefix",
    )
    add_field_argument(
        p, WorkerConfig, "null_model", "workers without a model (control-plane load tests)"
    )
    add_field_argument(p, WorkerConfig, "null_step_ms", WORKER_HELPS["null_step_ms"])


def run(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    live = [p for p in read_system(run_dir) if pid_alive(p.pid)]
    if live:
        print(
            f"a system is already running from {run_dir} (see `sarathi-serve status`; "
            "stop it with `sarathi-serve down`)",
            file=sys.stderr,
        )
        return 1
    if not InternalToken.from_env().enabled:  # the children and the CLI share a new one
        os.environ[TOKEN_ENV] = InternalToken.create(run_dir).token
    try:
        children = plan_children(args, run_dir)
    except StartupError as exc:
        print(f"sarathi-serve up: {exc}", file=sys.stderr)
        return 1
    print(f"preparing model {args.model} ...", flush=True)
    resolve_model(args.model)  # with null workers too: the gateway's tokenizer
    if not args.null_model:
        prepare_cpu_kernels()  # CPU workers' kernels: the first build takes about a minute
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        start_all(children, stop)
        write_system(run_dir, records(children))
        _print_up(args, children)
        supervise(children, run_dir, stop)
        return 0
    except StartupError as exc:
        print(f"sarathi-serve up: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all(children)
        clear_system(run_dir)
        print("sarathi-serve stopped", flush=True)


def _print_up(args: argparse.Namespace, children: list[Child]) -> None:
    gateway = next(c for c in children if c.role == "gateway")
    print(
        f"sarathi-serve is up: gateway {gateway.address} (gRPC)"
        + (f", http://{args.host}:{args.http_port}/v1 (OpenAI)" if args.http_port else "")
        + f"; logs in {args.run_dir / 'logs'}",
        flush=True,
    )
    print(
        'try: sarathi-serve generate "What is the capital of France?"  |  stop: Ctrl-C',
        flush=True,
    )
