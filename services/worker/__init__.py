"""The worker: model, paged KV cache, one forward pass per step plan, sampling."""

from __future__ import annotations


def prepare_cpu_kernels() -> bool:
    """Builds (once, cached) the CPU decode-attention kernel that CPU workers load, so
    that no worker waits for the compiler on its first step. False where it cannot be
    built here (no compiler): workers then use the gather + SDPA path."""
    from sarathi_serve.worker.attention.cpu_kernel import load_paged_decode

    return load_paged_decode() is not None
