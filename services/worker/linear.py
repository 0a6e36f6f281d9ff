"""Linear layers on CPU: oneDNN matmuls with weights packed once at load.

`nn.Linear` on CPU calls MKL's sgemm on the weight as stored (`[out, in]`). On the
AMD cores of the development machine that runs the skinny products of a serving step
(a handful of decode rows, a 256-token chunk) far below the machine's rate: 4-10
GFLOP/s for 1-4 rows. oneDNN's matmul, with each weight reordered once into its own
blocked layout, runs the same products 1.3-2.2x faster (rows 1-256; `bench worker`
and docs/performance.md). `pack_linears` switches a loaded model over in place:
each `nn.Linear` keeps its place, name and hooks (tensor parallel's all-reduce is a
forward hook) and only its `forward` changes; the dense weight is released (a
weight tied to the embeddings stays with the embeddings).
"""

from __future__ import annotations

import torch
from torch import nn

LINEAR_BACKENDS = ("auto", "onednn", "torch")


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(
        torch.ops.mkldnn, "_reorder_linear_weight"
    )


def use_onednn(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    """`auto`: oneDNN for fp32/bf16 on CPU where torch has it; `onednn` insists."""
    if backend not in LINEAR_BACKENDS:
        raise ValueError(f"linear backend must be one of {LINEAR_BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    fits = device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and onednn_available()
    if fits and dtype == torch.bfloat16:  # oneDNN's bf16 kernels need AVX-512 (or AVX-NE)
        fits = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if backend == "onednn" and not fits:
        raise ValueError(
            "the onednn linear backend needs a CPU device, float32 weights (bfloat16 on a "
            "CPU with oneDNN's bf16 support) and a torch built with oneDNN "
            "(torch.backends.mkldnn)"
        )
    return fits


class PackedLinear:
    """A replacement `forward` for one `nn.Linear`: `x @ W.T + b` by oneDNN on a
    weight packed once. Any leading shape; the last dimension is `in_features`."""

    def __init__(self, linear: nn.Linear):
        weight = linear.weight.detach()
        self.out_features = linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, x.shape[-1])
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return out.reshape(*lead, self.out_features)


def pack_linears(model: nn.Module) -> int:
    """Switches every `nn.Linear` of `model` to a `PackedLinear` forward (in place).
    Returns how many it switched."""
    switched = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and "forward" not in module.__dict__:
            module.forward = PackedLinear(module)  # type: ignore[method-assign,assignment]
            module.weight = nn.Parameter(
                torch.empty_like(module.weight, device="meta"), requires_grad=False
            )
            switched += 1
    return switched
