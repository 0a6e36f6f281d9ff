"""Health probes of the services (gRPC health, the scheduler's stats, Redis PING), used by `up`
(readiness), `status` (its health column), the benchmarks and the tests."""

from __future__ import annotations

import socket

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sarathi_serve.common.auth import InternalToken
from sarathi_serve.protocol import scheduler_pb2 as pb
from sarathi_serve.protocol import scheduler_pb2_grpc as pb_grpc


def grpc_health(address: str, timeout: float = 1.0, service: str = "") -> str:
    """`SERVING`, `NOT_SERVING`, or `UNREACHABLE` (of the server, or of one `service`)."""
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
    except grpc.RpcError:
        return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def redis_health(address: str, timeout: float = 1.0) -> str:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return "SERVING" if sock.recv(16).startswith(b"+PONG") else "NOT_SERVING"
    except OSError:
        return "UNREACHABLE"


def scheduler_stats(
    address: str,
    timeout: float = 2.0,
    max_iterations: int = 1,
    token: InternalToken | None = None,
) -> pb.GetStatsResponse:
    """The scheduler's counters and its last `max_iterations` iterations (0: all it keeps;
    polling for counters with 0 would copy up to 10,000 iterations on its event loop).
    `token`: the internal token (default: the environment's)."""
    metadata = (token or InternalToken.from_env()).metadata
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.SchedulerStub(channel).GetStats(
            pb.GetStatsRequest(max_iterations=max_iterations), timeout=timeout, metadata=metadata
        )


def leads_with_a_worker(
    address: str, min_workers: int = 1, token: InternalToken | None = None
) -> bool:
    """Whether the scheduler at `address` leads and has workers attached (ready to serve)."""
    try:
        stats = scheduler_stats(address, timeout=1.0, token=token)
    except grpc.RpcError:
        return False
    return stats.is_leader and stats.num_workers >= min_workers


def probe(role: str, address: str, token: InternalToken | None = None) -> str:
    if role == "redis":
        return redis_health(address)
    if role == "scheduler":
        try:
            leads = scheduler_stats(address, timeout=1.0, token=token).is_leader
            return "LEADER" if leads else "STANDBY"
        except grpc.RpcError:
            return "UNREACHABLE"
    return grpc_health(address)
