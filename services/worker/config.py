"""Worker configuration: built once in main() from flags and environment."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass

from sarathi_serve.common.models import DEFAULT_MODEL

DEFAULT_HEALTH_PORT = 50053


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    scheduler_addr: str = "127.0.0.1:50052"
    model: str = DEFAULT_MODEL
    worker_id: str = ""
    host: str = "127.0.0.1"
    port: int = DEFAULT_HEALTH_PORT  # grpc.health.v1 only
    block_size: int = 16
    kv_cache_gb: float = 1.0
    num_threads: int = 0  # 0: torch's default
    device: str = "cpu"
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.kv_cache_gb <= 0:
            raise ValueError(f"kv_cache_gb must be > 0, got {self.kv_cache_gb}")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {self.num_threads}")

    @property
    def kv_cache_bytes(self) -> int:
        return int(self.kv_cache_gb * (1 << 30))

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> WorkerConfig:
        env = os.environ.get
        d = cls()
        p = argparse.ArgumentParser(prog="sarathi-serve-worker", description="sarathi-serve worker")
        p.add_argument("--scheduler", default=env("SARATHI_SCHEDULER_ADDR", d.scheduler_addr))
        p.add_argument("--model", default=env("SARATHI_MODEL", d.model))
        p.add_argument(
            "--worker-id", default=env("SARATHI_WORKER_ID", f"{socket.gethostname()}-{os.getpid()}")
        )
        p.add_argument("--host", default=env("SARATHI_WORKER_HOST", d.host))
        p.add_argument("--port", type=int, default=int(env("SARATHI_WORKER_PORT", d.port)))
        p.add_argument(
            "--block-size", type=int, default=int(env("SARATHI_BLOCK_SIZE", d.block_size))
        )
        p.add_argument(
            "--kv-cache-gb", type=float, default=float(env("SARATHI_KV_CACHE_GB", d.kv_cache_gb))
        )
        p.add_argument(
            "--num-threads", type=int, default=int(env("SARATHI_NUM_THREADS", d.num_threads))
        )
        p.add_argument("--device", default=env("SARATHI_DEVICE", d.device))
        p.add_argument("--seed", type=int, default=None)
        a = p.parse_args(argv)
        return cls(
            scheduler_addr=a.scheduler,
            model=a.model,
            worker_id=a.worker_id,
            host=a.host,
            port=a.port,
            block_size=a.block_size,
            kv_cache_gb=a.kv_cache_gb,
            num_threads=a.num_threads,
            device=a.device,
            seed=a.seed,
        )
