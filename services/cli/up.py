"""`sarathi-serve up`: start Redis, the scheduler, a worker and the gateway, and supervise them.

Children are started in their own session so that Ctrl-C reaches only this
supervisor, which then stops them role by role (gateways, workers, schedulers, Redis).
A child that exits unexpectedly is restarted; `status` shows the restarts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sarathi_serve.common import probes
from sarathi_serve.common.models import DEFAULT_MODEL, resolve_model
from sarathi_serve.common.net import free_port, port_free
from sarathi_serve.common.run_records import (
    ProcessRecord,
    clear_system,
    default_run_dir,
    pid_alive,
    read_system,
    write_system,
)
from sarathi_serve.gateway.config import DEFAULT_HTTP_PORT as GATEWAY_HTTP_PORT
from sarathi_serve.gateway.config import DEFAULT_PORT as GATEWAY_PORT
from sarathi_serve.scheduler.config import DEFAULT_PORT as SCHEDULER_PORT
from sarathi_serve.scheduler.policies import POLICIES
from sarathi_serve.worker import prepare_cpu_kernels
from sarathi_serve.worker.config import DEFAULT_HEALTH_PORT as WORKER_PORT

READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 10.0
REDIS_INSTALL_HINT = (
    "redis-server is not installed: run `apt-get install -y redis-server` (Debian/Ubuntu)"
)


class StartupError(RuntimeError):
    pass


@dataclass
class Child:
    role: str
    argv: list[str]
    address: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    variant: str = ""  # A/B: the variant a scheduler or worker serves
    metrics: str = ""  # its Prometheus endpoint
    started_at: float = field(default=0.0)

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open by the child)
        self.process = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.started_at = time.monotonic()

    def record(self) -> ProcessRecord:
        assert self.process is not None
        return ProcessRecord(
            self.role,
            self.process.pid,
            self.address,
            str(self.log_path),
            self.restarts,
            self.variant,
            self.metrics,
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="default model name or a local HF checkpoint folder"
    )
    p.add_argument("--host", default="127.0.0.1", help="address the gateway listens on")
    p.add_argument("--port", type=int, default=GATEWAY_PORT, help="gateway gRPC port")
    p.add_argument(
        "--http-port",
        type=int,
        default=GATEWAY_HTTP_PORT,
        help="gateway OpenAI-compatible HTTP port (and /metrics); 0: off",
    )
    p.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        metavar="NAME=POLICY[:BUDGET][@WEIGHT]",
        help="A/B test: one scheduler set + worker per variant, routed by weight (repeat it)",
    )
    p.add_argument("--api-keys-file", help="require these API keys (one per line) at the gateway")
    p.add_argument("--scheduler-port", type=int, default=SCHEDULER_PORT)
    p.add_argument("--worker-port", type=int, default=WORKER_PORT, help="worker health port")
    p.add_argument("--policy", default="sarathi", choices=sorted(POLICIES))
    p.add_argument(
        "--token-budget", type=int, default=512, help="tokens per iteration (the chunk size)"
    )
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument(
        "--target-tbt-ms",
        type=float,
        default=0.0,
        help="sarathi: choose each iteration's budget to keep it under this (0: static budget)",
    )
    p.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    p.add_argument("--kv-cache-gb", type=float, default=1.0)
    p.add_argument(
        "--num-threads", type=int, default=0, help="torch threads of the worker (0: all cores)"
    )
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="ranks of the worker group")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="model replicas (workers) per scheduler; new requests go to the least loaded",
    )
    p.add_argument(
        "--schedulers", type=int, default=1, help="scheduler processes: a leader and standbys (HA)"
    )
    p.add_argument("--run-dir", type=Path, default=default_run_dir())


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
    try:
        children = _plan_children(args, run_dir)
    except StartupError as exc:
        print(f"sarathi-serve up: {exc}", file=sys.stderr)
        return 1
    print(f"preparing model {args.model} ...", flush=True)
    resolve_model(args.model)
    prepare_cpu_kernels()  # CPU workers' decode kernel: the first build takes about a minute
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        _start_all(children, stop)
        write_system(run_dir, _records(children))
        gateway = next(c for c in children if c.role == "gateway")
        print(
            f"sarathi-serve is up: gateway {gateway.address} (gRPC)"
            + (f", http://{args.host}:{args.http_port}/v1 (OpenAI)" if args.http_port else "")
            + f"; logs in {run_dir / 'logs'}",
            flush=True,
        )
        print(
            'try: sarathi-serve generate "What is the capital of France?"  |  stop: Ctrl-C',
            flush=True,
        )
        _supervise(children, run_dir, stop)
        return 0
    except StartupError as exc:
        print(f"sarathi-serve up: {exc}", file=sys.stderr)
        return 1
    finally:
        _stop_all(children)
        clear_system(run_dir)
        print("sarathi-serve stopped", flush=True)


@dataclass(frozen=True, slots=True)
class VariantPlan:
    """One scheduler set + worker; several of them make an A/B test behind the gateway."""

    name: str
    policy: str
    token_budget: int
    weight: float = 1.0


def parse_variant(text: str) -> VariantPlan:
    """`NAME=POLICY[:BUDGET][@WEIGHT]`, e.g. `a=sarathi:256@50`."""
    try:
        name, _, rest = text.partition("=")
        rest, _, weight = rest.partition("@")
        policy, _, budget = rest.partition(":")
        plan = VariantPlan(name, policy, int(budget or 512), float(weight or 1.0))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected NAME=POLICY[:BUDGET][@WEIGHT], e.g. a=sarathi:512@50"
        ) from None
    if not name or policy not in POLICIES or plan.token_budget < 1 or plan.weight < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: NAME=POLICY[:BUDGET][@WEIGHT] with POLICY one of {sorted(POLICIES)}"
        )
    return plan


def _plan_children(args: argparse.Namespace, run_dir: Path) -> list[Child]:
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    if args.workers < 1 or args.schedulers < 1:
        raise StartupError("--workers and --schedulers must be >= 1")
    for what, port in (("--port", args.port), ("--http-port", args.http_port)):
        if port and not port_free(args.host, port):
            raise StartupError(f"gateway port {port} is in use: pass {what}")
    taken = {args.port, args.http_port}  # planned, not yet bound
    scheduler_port = _preferred_port(args.scheduler_port, taken)
    worker_port = _preferred_port(args.worker_port, taken)
    children: list[Child] = []
    redis_url = args.redis_url
    if redis_url is None:
        redis = _redis_child(run_dir, _pick_port(taken))
        children.append(redis)
        redis_url = f"redis://{redis.address}/0"
    variants = args.variant or [VariantPlan("", args.policy, args.token_budget)]
    routes = []
    for i, variant in enumerate(variants):
        ports = [scheduler_port if i == 0 else _pick_port(taken)]
        ports += [_pick_port(taken) for _ in range(args.schedulers - 1)]
        scheduler_addr = ",".join(f"127.0.0.1:{port}" for port in ports)
        children += _scheduler_children(args, variant, ports, redis_url, logs, taken)
        for w in range(args.workers):
            port = worker_port if i == 0 and w == 0 else _pick_port(taken)
            name = "-".join(p for p in (variant.name, str(w) if args.workers > 1 else "") if p)
            children.append(
                _worker_child(args, variant, name, scheduler_addr, port, logs, _pick_port(taken))
            )
        routes.append(
            {"name": variant.name, "weight": variant.weight, "scheduler_addr": scheduler_addr}
        )
    gateway_args = ["--http-port", str(args.http_port)]
    if args.variant:
        variants_file = run_dir / "variants.json"
        variants_file.write_text(json.dumps(routes, indent=2))
        gateway_args += ["--variants-file", str(variants_file)]
    else:
        gateway_args += ["--scheduler-addr", routes[0]["scheduler_addr"]]
    if args.api_keys_file:
        gateway_args += ["--api-keys-file", str(Path(args.api_keys_file).resolve())]
    children.append(
        Child(
            "gateway",
            [
                *_PY,
                "sarathi_serve.gateway",
                "--model",
                args.model,
                "--host",
                args.host,
                "--port",
                str(args.port),
                *gateway_args,
            ],
            f"{args.host}:{args.port}",
            logs / "gateway.log",
            metrics=f"http://{args.host}:{args.http_port}/metrics" if args.http_port else "",
        )
    )
    return children


_PY = [sys.executable, "-m"]


def _preferred_port(port: int, taken: set[int]) -> int:
    if port not in taken and port_free("127.0.0.1", port):
        taken.add(port)
        return port
    return _pick_port(taken)


def _redis_child(run_dir: Path, port: int) -> Child:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise StartupError(REDIS_INSTALL_HINT + ", or pass --redis-url")
    data = run_dir / "redis"
    data.mkdir(exist_ok=True)
    return Child(
        "redis",
        [
            redis_server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",  # one write per iteration: cheap, and nothing released is lost
            "--dir",
            str(data),
        ],
        f"127.0.0.1:{port}",
        run_dir / "logs" / "redis.log",
    )


def _scheduler_children(
    args: argparse.Namespace,
    variant: VariantPlan,
    ports: list[int],
    redis_url: str,
    logs: Path,
    taken: set[int],
) -> list[Child]:
    suffix = f"-{variant.name}" if variant.name else ""
    prefix = f"sarathi{suffix}"  # each variant keeps its own state and lease in Redis
    return [
        Child(
            "scheduler",
            [
                *_PY,
                "sarathi_serve.scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--scheduler-id",
                f"scheduler{suffix}-{i}",
                "--redis-url",
                redis_url,
                "--redis-prefix",
                prefix,
                "--policy",
                variant.policy,
                "--token-budget",
                str(variant.token_budget),
                "--max-num-seqs",
                str(args.max_num_seqs),
                "--target-tbt-ms",
                str(args.target_tbt_ms if variant.policy == "sarathi" else 0.0),
                "--metrics-port",
                str(metrics_port),
            ],
            f"127.0.0.1:{port}",
            logs / f"scheduler{suffix}-{i}.log",
            variant=variant.name,
            metrics=f"http://127.0.0.1:{metrics_port}/metrics",
        )
        for i, (port, metrics_port) in enumerate(
            zip(ports, [_pick_port(taken) for _ in ports], strict=True)
        )
    ]


def _worker_child(
    args: argparse.Namespace,
    variant: VariantPlan,
    name: str,
    scheduler_addr: str,
    port: int,
    logs: Path,
    metrics_port: int,
) -> Child:
    return Child(
        "worker",
        [
            *_PY,
            "sarathi_serve.worker",
            "--scheduler-addr",
            scheduler_addr,
            "--model",
            args.model,
            "--port",
            str(port),
            "--kv-cache-gb",
            str(args.kv_cache_gb),
            "--num-threads",
            str(args.num_threads),
            "--tensor-parallel-size",
            str(args.tensor_parallel_size),
            "--metrics-port",
            str(metrics_port),
        ],
        f"127.0.0.1:{port}",
        logs / f"worker{'-' + name if name else ''}.log",
        variant=variant.name,
        metrics=f"http://127.0.0.1:{metrics_port}/metrics",
    )


def _pick_port(taken: set[int]) -> int:
    """A port free now and not already planned for another child (which binds it later)."""
    while (port := free_port()) in taken:
        pass
    taken.add(port)
    return port


def _start_all(children: list[Child], stop: threading.Event) -> None:
    for child in children:
        child.start()
        if child.role == "redis":  # the schedulers need it at once
            _wait_ready(child, stop)
    for child in children:
        if child.role != "scheduler":  # a standby scheduler is never SERVING
            _wait_ready(child, stop)
    by_variant: dict[str, list[str]] = {}
    for c in children:
        if c.role == "scheduler":
            by_variant.setdefault(c.variant, []).append(c.address)
    deadline = time.monotonic() + READY_TIMEOUT_S

    def ready(addrs: list[str]) -> bool:
        return any(probes.leads_with_a_worker(a, min_workers=workers) for a in addrs)

    workers = sum(c.role == "worker" for c in children) // max(len(by_variant), 1)
    while not all(ready(addrs) for addrs in by_variant.values()):
        _check_alive(children, stop, deadline)
        time.sleep(0.2)


def _wait_ready(child: Child, stop: threading.Event) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while probes.probe(child.role, child.address) not in ("SERVING", "LEADER"):
        _check_alive([child], stop, deadline)
        time.sleep(0.2)


def _check_alive(children: list[Child], stop: threading.Event, deadline: float) -> None:
    if stop.is_set():
        raise StartupError("interrupted")
    for child in children:
        assert child.process is not None
        if child.process.poll() is not None:
            tail = child.log_path.read_text(errors="replace").splitlines()[-15:]
            raise StartupError(
                f"{child.role} exited with code {child.process.returncode}:\n  " + "\n  ".join(tail)
            )
    if time.monotonic() > deadline:
        raise StartupError(f"not ready after {READY_TIMEOUT_S:.0f}s; see the logs")


def _supervise(children: list[Child], run_dir: Path, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        for child in children:
            assert child.process is not None
            if child.process.poll() is None:
                continue
            print(
                f"{child.role} exited with code {child.process.returncode}; restarting",
                file=sys.stderr,
                flush=True,
            )
            if time.monotonic() - child.started_at < 2.0:
                time.sleep(2.0)  # crash loop: do not spin
            child.restarts += 1
            child.start()
            write_system(run_dir, _records(children))


def _records(children: list[Child]) -> list[ProcessRecord]:
    supervisor = ProcessRecord("up", os.getpid(), "-", "-")
    return [supervisor, *(c.record() for c in children if c.process is not None)]


STOP_ORDER = ("gateway", "worker", "scheduler", "redis")  # the clients' side first


def _stop_all(children: list[Child]) -> None:
    """Stops one role at a time, in STOP_ORDER; the children of a role all at once."""
    for role in STOP_ORDER:
        running = [
            c.process
            for c in children
            if c.role == role and c.process is not None and c.process.poll() is None
        ]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in running:
            try:
                process.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
