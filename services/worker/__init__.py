"""The worker: model, paged KV cache, one forward pass per step plan, sampling.

Importing this package before torch (as `python -m sarathi_serve.worker` does) sets a
short OpenMP spin-wait for the worker process and its ranks unless the environment
chose one: GOMP_SPINCOUNT=10000 (about 0.1-0.5 ms of spinning, then sleep). By default
libgomp spins far longer, so when another process takes one of the cores (the gateway
tokenizing a 1 M-character prompt, say) the step's other thread spins at every barrier
on its core while the descheduled one waits for a time slice: one 4-decode step took
617 ms instead of 45 (measured). With the short spin the waiting thread sleeps, the
kernel runs the other on its core, and the same steps took 104-137 ms; in normal
running the short spin was within noise of the default (docs/performance.md section 8).
"""

from __future__ import annotations

import os

OMP_SPINCOUNT = "10000"
os.environ.setdefault("GOMP_SPINCOUNT", OMP_SPINCOUNT)  # read when torch loads libgomp


def prepare_cpu_kernels() -> bool:
    """Builds (once, cached) the C++ extensions that CPU workers load (the decode-attention
    kernel, the decoder layers' elementwise ops), so that no worker waits for the compiler
    on its first step. False where they cannot be built here (no compiler): workers then
    use gather + SDPA and Hugging Face's own layers."""
    from sarathi_serve.worker.attention.cpu_kernel import load_paged_decode
    from sarathi_serve.worker.fused_layers import load_layer_ops

    decode, layers = load_paged_decode(), load_layer_ops()
    return decode is not None and layers is not None
