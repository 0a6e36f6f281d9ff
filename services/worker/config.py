"""Worker configuration: built once in main() from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sarathi_serve.common.config import parse_config, split_addrs
from sarathi_serve.common.models import DEFAULT_MODEL
from sarathi_serve.worker.linear import LINEAR_BACKENDS

DEFAULT_HEALTH_PORT = 50053
DTYPES = {"auto", "float32", "bfloat16", "float16"}


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    scheduler_addr: str = "127.0.0.1:50052"
    model: str = DEFAULT_MODEL
    worker_id: str = ""
    host: str = "127.0.0.1"
    port: int = DEFAULT_HEALTH_PORT  # grpc.health.v1 only
    block_size: int = 16
    kv_cache_gb: float = 0.0  # 0: CPU 1 GiB; CUDA from gpu_memory_utilization
    gpu_memory_utilization: float = 0.9
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on CUDA
    num_threads: int = 0  # 0: torch's default
    small_step_tokens: int = 32  # CPU: smaller steps on the faster thread count (step_threads.py)
    device: str = "cpu"
    attention_backend: str = "auto"
    linear_backend: str = "auto"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    pipeline_layers: str = ""  # layers per stage, e.g. "16,14"; empty: an even split
    pipeline_stage: int = -1  # >= 0: this process hosts that stage only (one pod per stage)
    group_addr: str = ""  # host:port where a group spread over pods meets (stage 0's)
    null_model: bool = False  # benchmarks of the control plane: no model, hashed tokens
    null_step_ms: float = 0.0  # with null_model: each step takes this long (an accelerator's)
    seed: int | None = None
    metrics_port: int = 0  # Prometheus /metrics; 0: off
    hang_s: float = 300.0  # a step running longer: health NOT_SERVING (liveness restarts it)

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.kv_cache_gb < 0:
            raise ValueError(f"kv_cache_gb must be >= 0, got {self.kv_cache_gb}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.pipeline_parallel_size < 1:
            raise ValueError(
                f"pipeline_parallel_size must be >= 1, got {self.pipeline_parallel_size}"
            )
        if self.pipeline_layers and len(self.layer_split) != self.pipeline_parallel_size:
            raise ValueError(
                f"pipeline_layers needs a count for each of {self.pipeline_parallel_size} "
                f"stages, got {self.pipeline_layers!r}"
            )
        if not -1 <= self.pipeline_stage < self.pipeline_parallel_size:
            raise ValueError(
                f"pipeline_stage must be -1 or a stage of {self.pipeline_parallel_size}, "
                f"got {self.pipeline_stage}"
            )
        if (self.pipeline_stage >= 0) != bool(self.group_addr):
            raise ValueError("--pipeline-stage and --group-addr go together")
        if self.linear_backend not in LINEAR_BACKENDS:
            raise ValueError(
                f"linear_backend must be one of {LINEAR_BACKENDS}, got {self.linear_backend!r}"
            )
        if self.null_step_ms < 0:
            raise ValueError(f"null_step_ms must be >= 0, got {self.null_step_ms}")
        if self.hang_s < 0:
            raise ValueError(f"hang_s must be >= 0, got {self.hang_s}")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {self.num_threads}")
        if self.small_step_tokens < 0:
            raise ValueError(f"small_step_tokens must be >= 0, got {self.small_step_tokens}")

    @property
    def scheduler_addrs(self) -> list[str]:
        return split_addrs(self.scheduler_addr)

    @property
    def layer_split(self) -> tuple[int, ...]:
        """Decoder layers per pipeline stage; (): as even as they divide."""
        try:
            split = tuple(int(n) for n in self.pipeline_layers.split(",") if n.strip())
        except ValueError:
            raise ValueError(
                f"pipeline_layers must be comma-separated counts, got {self.pipeline_layers!r}"
            ) from None
        if any(n < 1 for n in split):
            raise ValueError(f"pipeline_layers must be counts >= 1, got {self.pipeline_layers!r}")
        return split

    @property
    def local_ranks(self) -> range:
        """The group's ranks this process and its children run: all of them, or with
        `pipeline_stage` that stage's tensor-parallel ranks (global rank s * T + t)."""
        tp = self.tensor_parallel_size
        if self.pipeline_stage < 0:
            return range(tp * self.pipeline_parallel_size)
        return range(self.pipeline_stage * tp, (self.pipeline_stage + 1) * tp)

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        return getattr(torch, self.dtype)  # type: ignore[no-any-return]

    @property
    def kv_cache_bytes(self) -> int | None:
        """The configured budget; None: size it from the device (see ModelRunner)."""
        return int(self.kv_cache_gb * (1 << 30)) or None

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> WorkerConfig:
        return parse_config(cls, argv, role="worker", helps=HELPS)


HELPS = {  # --help of the flags (`sarathi-serve up` reuses them)
    "scheduler_addr": "host:port of the scheduler, or a comma-separated list (leader + standbys)",
    "model": "the default model's name or a local Hugging Face checkpoint folder",
    "worker_id": "name shown in logs and stats; empty: hostname-pid",
    "port": "port of the grpc.health.v1 server",
    "kv_cache_gb": "memory for the paged KV cache; 0: 1 GiB on CPU, measured on CUDA",
    "gpu_memory_utilization": "CUDA: fraction of the GPU for weights, activations and KV cache",
    "num_threads": "torch threads; 0: torch's default",
    "small_step_tokens": "CPU: steps of fewer tokens than this (a few decodes) run on all "
    "torch threads or on one fewer (a core left to the scheduler and gateway beside the "
    "worker), whichever paired steps measure faster; 0: every step on all threads",
    "metrics_port": "port of the Prometheus /metrics endpoint; 0: off",
    "hang_s": "a step that runs longer than this makes the worker's health NOT_SERVING "
    "(a liveness probe, or `up`, then restarts it); 0: never",
    "null_model": "no model: answer each step at once with a hashed token (control-plane bench)",
    "null_step_ms": "with --null-model: each step takes this long, like an accelerator's step",
    "tensor_parallel_size": "ranks of this worker group (gloo on CPU, NCCL on CUDA)",
    "pipeline_parallel_size": (
        "pipeline stages of this worker group, each a contiguous range of layers "
        "(x --tensor-parallel-size ranks each)"
    ),
    "pipeline_layers": (
        "decoder layers of each pipeline stage, comma-separated (e.g. 16,14: the last "
        "stage also runs the LM head); empty: as even as they divide"
    ),
    "pipeline_stage": (
        "a group spread over pods, one per stage: the stage this process hosts (its "
        "tensor-parallel ranks; stage 0 also talks to the scheduler); -1: every stage here"
    ),
    "group_addr": "with --pipeline-stage: host:port of stage 0's pod, where the group meets",
    "linear_backend": "auto (oneDNN with packed weights on CPU where torch has it), onednn, torch",
    "attention_backend": "auto (flash-attn, else flex on CUDA; torch on CPU), torch, flex or flash",
}
