"""How much memory a worker gives its KV cache."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from sarathi_serve.worker.kv_cache import KVCache, KVCacheSpec

if TYPE_CHECKING:
    from sarathi_serve.worker.model_runner import ModelRunner

log = logging.getLogger(__name__)

DEFAULT_CPU_KV_BYTES = 1 << 30


def measured_kv_budget(
    runner: ModelRunner, spec: KVCacheSpec, utilization: float, profile_tokens: int
) -> int:
    """CPU: 1 GiB. CUDA: `utilization` of the GPU minus the peak of a profiling
    forward pass over `profile_tokens` tokens (weights + activations)."""
    if runner.device.type != "cuda":
        return DEFAULT_CPU_KV_BYTES
    num_blocks = -(-profile_tokens // spec.block_size)
    runner.kv_cache = KVCache(
        spec, num_blocks, device=runner.device, layout=runner.backend.kv_layout
    )
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(runner.device)
    from sarathi_serve.worker.model_runner import GREEDY, BatchEntry, Sequence

    probe = Sequence(
        "profile", [0] * profile_tokens, profile_tokens, GREEDY, list(range(num_blocks))
    )
    runner.execute([BatchEntry(probe, profile_tokens)])
    torch.cuda.synchronize(runner.device)
    peak = torch.cuda.max_memory_allocated(runner.device) - runner.kv_cache.num_bytes
    del runner.kv_cache
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(runner.device).total_memory
    budget = int(total * utilization) - peak
    log.info(
        "profiled peak %.2f GiB of %.2f GiB; KV budget %.2f GiB",
        peak / 2**30,
        total / 2**30,
        budget / 2**30,
    )
    if budget <= 0:
        raise ValueError(
            f"no memory left for the KV cache at gpu_memory_utilization={utilization}: "
            "raise it or use a smaller model"
        )
    return budget
