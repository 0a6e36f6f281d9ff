"""What `sarathi-serve up` starts: Redis, then per variant a scheduler set and its workers,
then the gateway; nothing is started here.

Each service child gets one config dataclass built from `up`'s flags, and its command
line is that config's `to_argv`. Every field `up` sets is pinned (given as a flag even at
its default), so the environment changes only the fields `up` leaves to the service.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sarathi_serve.cli.up_supervisor import STOP_TIMEOUT_S, Child, StartupError
from sarathi_serve.common.config import to_argv
from sarathi_serve.common.net import free_port, port_free
from sarathi_serve.gateway.config import GatewayConfig
from sarathi_serve.scheduler.config import SchedulerConfig
from sarathi_serve.scheduler.policies import DEFAULT_TOKEN_BUDGET, POLICIES
from sarathi_serve.worker.config import WorkerConfig

LOCALHOST = "127.0.0.1"  # schedulers, workers and Redis serve only this machine
REDIS_INSTALL_HINT = (
    "redis-server is not installed: run `apt-get install -y redis-server` (Debian/Ubuntu)"
)
C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class VariantPlan:
    """One scheduler set + worker; several of them make an A/B test behind the gateway."""

    name: str
    policy: str
    token_budget: int
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class SchedulerSet:
    """A leader and its standbys with their workers: one per variant and shard."""

    variant: VariantPlan
    shard: str  # "" with one shard
    ports: list[int]

    @property
    def addr(self) -> str:
        """The schedulers' addresses, as workers and the gateway dial them."""
        return ",".join(f"{LOCALHOST}:{port}" for port in self.ports)

    @property
    def suffix(self) -> str:
        """Names its state in Redis, its scheduler ids and its logs."""
        return "".join(
            f"-{part}" for part in (self.variant.name, self.shard and f"s{self.shard}") if part
        )


def parse_variant(text: str) -> VariantPlan:
    """`NAME=POLICY[:BUDGET][@WEIGHT]`, e.g. `a=sarathi:256@50`."""
    try:
        name, _, rest = text.partition("=")
        rest, _, weight = rest.partition("@")
        policy, _, budget = rest.partition(":")
        plan = VariantPlan(name, policy, int(budget or DEFAULT_TOKEN_BUDGET), float(weight or 1.0))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected NAME=POLICY[:BUDGET][@WEIGHT], e.g. a=sarathi:512@50"
        ) from None
    if not name or policy not in POLICIES or plan.token_budget < 1 or plan.weight < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: NAME=POLICY[:BUDGET][@WEIGHT] with POLICY one of {sorted(POLICIES)}"
        )
    return plan


def plan_children(args: argparse.Namespace, run_dir: Path) -> list[Child]:
    """The children of `up` with `args`, in start order (StartupError if it cannot be)."""
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    if args.workers < 1 or args.schedulers < 1 or args.shards < 1:
        raise StartupError("--workers, --schedulers and --shards must be >= 1")
    if args.null_step_ms and not args.null_model:
        raise StartupError("--null-step-ms goes with --null-model")
    taken = _gateway_ports(args)
    scheduler_port = _preferred_port(args.scheduler_port, taken)
    worker_port = _preferred_port(args.worker_port, taken)
    children: list[Child] = []
    redis_url = args.redis_url
    if redis_url is None:
        redis = _redis_child(run_dir, _pick_port(taken))
        children.append(redis)
        redis_url = f"redis://{redis.address}/0"
    variants = args.variant or [VariantPlan("", args.policy, args.token_budget)]
    routes: list[dict[str, Any]] = []
    for i, variant in enumerate(variants):
        shard_addrs = []
        for k in range(args.shards):
            first = i == 0 and k == 0  # it gets the preferred ports
            ports = [scheduler_port if first else _pick_port(taken)]
            ports += [_pick_port(taken) for _ in range(args.schedulers - 1)]
            group = SchedulerSet(variant, str(k) if args.shards > 1 else "", ports)
            children += _scheduler_children(args, group, redis_url, logs, taken)
            first_port = worker_port if first else _pick_port(taken)
            children += _worker_children(args, group, first_port, logs, taken)
            shard_addrs.append(group.addr)
        route = ";".join(shard_addrs)  # the gateway's shards of this variant
        routes.append({"name": variant.name, "weight": variant.weight, "scheduler_addr": route})
    children.append(_gateway_child(args, routes, run_dir))
    return children


def _gateway_ports(args: argparse.Namespace) -> set[int]:
    """The gateway's ports, which must be free: the first ports planned."""
    for what, port in (("--port", args.port), ("--http-port", args.http_port)):
        if port and not port_free(args.host, port):
            raise StartupError(f"gateway port {port} is in use: pass {what}")
    return {args.port, args.http_port}


def _preferred_port(port: int, taken: set[int]) -> int:
    if port not in taken and port_free(LOCALHOST, port):
        taken.add(port)
        return port
    return _pick_port(taken)


def _pick_port(taken: set[int]) -> int:
    """A port free now and not already planned for another child (which binds it later)."""
    while (port := free_port()) in taken:
        pass
    taken.add(port)
    return port


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
            LOCALHOST,
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",  # one write per iteration: cheap, and nothing released is lost
            "--dir",
            str(data),
        ],
        f"{LOCALHOST}:{port}",
        run_dir / "logs" / "redis.log",
    )


def _service(module: str, cls: type[C], fields: dict[str, Any]) -> tuple[C, list[str]]:
    """The child's config, checked before anything starts, and its command line."""
    try:
        config = cls(**fields)
    except ValueError as exc:
        raise StartupError(f"{module}: {exc}") from None
    return config, [sys.executable, "-m", module, *to_argv(config, include=fields)]


def _scheduler_children(
    args: argparse.Namespace, group: SchedulerSet, redis_url: str, logs: Path, taken: set[int]
) -> list[Child]:
    variant, suffix = group.variant, group.suffix
    children = []
    for i, port in enumerate(group.ports):
        metrics_port = _pick_port(taken)
        _, argv = _service(
            "sarathi_serve.scheduler",
            SchedulerConfig,
            {
                "host": LOCALHOST,
                "port": port,
                "scheduler_id": f"scheduler{suffix}-{i}",
                "redis_url": redis_url,
                # each variant and shard keeps its own state and lease in Redis
                "redis_prefix": SchedulerConfig().redis_prefix + suffix,
                "policy": variant.policy,
                "token_budget": variant.token_budget,
                "max_num_seqs": args.max_num_seqs,
                "target_tbt_ms": args.target_tbt_ms if variant.policy == "sarathi" else 0.0,
                "target_tbt_factor": args.target_tbt_factor if variant.policy == "sarathi" else 0,
                "batch_priority": args.batch_priority if variant.policy == "sarathi" else 0,
                "prefix_caching": args.prefix_caching,
                "tenant_weights": args.tenant_weights,
                "metrics_port": metrics_port,
            },
        )
        children.append(
            Child(
                "scheduler",
                argv,
                f"{LOCALHOST}:{port}",
                logs / f"scheduler{suffix}-{i}.log",
                variant=variant.name,
                metrics=f"http://{LOCALHOST}:{metrics_port}/metrics",
                shard=group.shard,
            )
        )
    return children


def _worker_children(
    args: argparse.Namespace, group: SchedulerSet, first_port: int, logs: Path, taken: set[int]
) -> list[Child]:
    children = []
    for w in range(args.workers):
        port = first_port if w == 0 else _pick_port(taken)
        metrics_port = _pick_port(taken)
        _, argv = _service(
            "sarathi_serve.worker",
            WorkerConfig,
            {
                "scheduler_addr": group.addr,
                "model": args.model,
                "port": port,
                "kv_cache_gb": args.kv_cache_gb,
                "num_threads": args.num_threads,
                "tensor_parallel_size": args.tensor_parallel_size,
                "pipeline_parallel_size": args.pipeline_parallel_size,
                "pipeline_layers": args.pipeline_layers,
                "metrics_port": metrics_port,
                "null_model": args.null_model,
                "null_step_ms": args.null_step_ms,
            },
        )
        name = group.suffix + (f"-{w}" if args.workers > 1 else "")
        children.append(
            Child(
                "worker",
                argv,
                f"{LOCALHOST}:{port}",
                logs / f"worker{name}.log",
                variant=group.variant.name,
                metrics=f"http://{LOCALHOST}:{metrics_port}/metrics",
                shard=group.shard,
            )
        )
    return children


def _gateway_child(args: argparse.Namespace, routes: list[dict[str, Any]], run_dir: Path) -> Child:
    fields: dict[str, Any] = {
        "model": args.model,
        "host": args.host,
        "port": args.port,
        "http_port": args.http_port,
        "salt_cache_per_api_key": args.salt_cache_per_api_key,
        "drain_s": args.drain_s,
    }
    if args.variant:
        variants_file = run_dir / "variants.json"
        variants_file.write_text(json.dumps(routes, indent=2))
        fields["variants_file"] = str(variants_file)
    else:
        fields["scheduler_addr"] = routes[0]["scheduler_addr"]
    if args.api_keys_file:
        fields["api_keys_file"] = str(Path(args.api_keys_file).resolve())
    config, argv = _service("sarathi_serve.gateway", GatewayConfig, fields)
    return Child(
        "gateway",
        argv,
        f"{config.host}:{config.port}",
        run_dir / "logs" / "gateway.log",
        metrics=f"http://{config.host}:{config.http_port}/metrics" if config.http_port else "",
        stop_timeout_s=config.drain_s + STOP_TIMEOUT_S,  # its drain, then its own stop
    )
