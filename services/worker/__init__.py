"""The worker: model, paged KV cache, one forward pass per step plan, sampling."""

from __future__ import annotations


def prepare_cpu_kernels() -> bool:
    """Builds (once, cached) the C++ extensions that CPU workers load (the decode-attention
    kernel, the decoder layers' elementwise ops), so that no worker waits for the compiler
    on its first step. False where they cannot be built here (no compiler): workers then
    use gather + SDPA and Hugging Face's own layers."""
    from sarathi_serve.worker.attention.cpu_kernel import load_paged_decode
    from sarathi_serve.worker.fused_layers import load_layer_ops

    decode, layers = load_paged_decode(), load_layer_ops()
    return decode is not None and layers is not None
