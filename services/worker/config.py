"""Worker configuration: built once in main() from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass

from sarathi_serve.common.config import parse_config
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
    attention_backend: str = "auto"
    tensor_parallel_size: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.kv_cache_gb <= 0:
            raise ValueError(f"kv_cache_gb must be > 0, got {self.kv_cache_gb}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {self.num_threads}")

    @property
    def kv_cache_bytes(self) -> int:
        return int(self.kv_cache_gb * (1 << 30))

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> WorkerConfig:
        return parse_config(cls, argv, role="worker", helps=_HELPS)


_HELPS = {
    "scheduler_addr": "host:port of the scheduler this worker dials",
    "model": "the default model's name or a local Hugging Face checkpoint folder",
    "worker_id": "name shown in logs and stats; empty: hostname-pid",
    "port": "port of the grpc.health.v1 server",
    "kv_cache_gb": "memory for the paged KV cache",
    "num_threads": "torch threads; 0: torch's default",
    "tensor_parallel_size": "ranks of this worker group (gloo on CPU, NCCL on CUDA)",
    "attention_backend": "auto (flash-attn, else flex on CUDA; torch on CPU), torch, flex or flash",
}
