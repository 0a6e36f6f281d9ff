"""Paged attention over a flat ragged batch, plugged into transformers.

`register()` adds an attention implementation named `sarathi_paged` to
transformers' `AttentionInterface`. Each decoder layer then calls
`paged_attention` with its q/k/v after RoPE (computed from the `position_ids`
we pass) and the step's `AttentionMetadata` (the `attn_metadata` keyword of
`model(...)`). It writes the new keys/values into the paged cache and lets the
selected backend attend over each sequence's context. Any Llama-like
architecture of transformers works unchanged, sliding windows included.

Backends share one small interface: `prepare(layout) -> metadata` once per
step, `forward(q, k, v, k_pool, v_pool, metadata, scale, window) -> out` per layer
(k, v: the step's own keys and values, already written to the pools), and
the KV layout their kernels want (`kv_layout`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from sarathi_serve.worker.attention.cpu_kernel import load_paged_decode
from sarathi_serve.worker.attention.layout import BatchLayout
from sarathi_serve.worker.attention.torch_backend import TorchBackend
from sarathi_serve.worker.kv_cache import KVCache

ATTENTION_NAME = "sarathi_paged"
FLASH_BLOCK_MULTIPLE = 256  # flash-attn's paged KV needs blocks of a multiple of this


class AttentionBackend(Protocol):
    name: str
    kv_layout: str  # kv_cache.HEAD_MAJOR or TOKEN_MAJOR

    def prepare(self, layout: BatchLayout) -> Any: ...

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_pool: torch.Tensor,
        v_pool: torch.Tensor,
        meta: Any,
        scale: float | None,
        window: int | None,
    ) -> torch.Tensor: ...


@dataclass(slots=True)
class AttentionMetadata:
    """What every layer's attention needs in one step."""

    kv_cache: KVCache
    layout: BatchLayout
    backend: AttentionBackend
    backend_meta: Any


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, H, T, D]
    key: torch.Tensor,  # [1, KVH, T, D]
    value: torch.Tensor,  # [1, KVH, T, D]
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    attn_metadata: AttentionMetadata | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    if attn_metadata is None:
        raise ValueError(f"{ATTENTION_NAME} attention needs attn_metadata=")
    out = attend(
        attn_metadata,
        int(module.layer_idx),  # type: ignore[arg-type]
        query[0].transpose(0, 1),  # [T, H, D]
        key[0].transpose(0, 1),  # [T, KVH, D]
        value[0].transpose(0, 1),
        scaling,
        sliding_window,
    )
    return out.unsqueeze(0), None  # [1, T, H, D]


def attend(
    meta: AttentionMetadata,
    layer: int,
    q: torch.Tensor,  # [T, H, D], after RoPE
    k: torch.Tensor,  # [T, KVH, D]
    v: torch.Tensor,
    scale: float | None,
    window: int | None,
) -> torch.Tensor:
    """Writes the step's keys and values of `layer` into the paged cache, then
    attends each query over its sequence's context: [T, H, D]."""
    meta.kv_cache.write(layer, meta.layout.slot_mapping, k, v)
    return meta.backend.forward(
        q,
        k,
        v,
        meta.kv_cache.keys[layer],
        meta.kv_cache.values[layer],
        meta.backend_meta,
        scale,
        window,
    )


def register() -> str:
    """Makes `attn_implementation=ATTENTION_NAME` available to transformers."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, paged_attention)
    return ATTENTION_NAME


BACKENDS = ("torch", "flex", "flash")


def select_backend(name: str, device: torch.device, block_size: int = 16) -> AttentionBackend:
    """`auto`: flash-attn on CUDA when installed (and the block size suits it),
    else FlexAttention on CUDA, else torch."""
    if name == "auto":
        if device.type != "cuda":
            name = "torch"
        elif importlib.util.find_spec("flash_attn") and block_size % FLASH_BLOCK_MULTIPLE == 0:
            name = "flash"
        else:
            name = "flex"
    if name == "torch":
        return TorchBackend(load_paged_decode() if device.type == "cpu" else None)
    if name == "flex":
        from sarathi_serve.worker.attention.flex_backend import FlexBackend

        return FlexBackend()
    if name == "flash":
        from sarathi_serve.worker.attention.flash_backend import FlashAttnBackend

        return FlashAttnBackend()
    raise ValueError(f"unknown attention backend {name!r}; known: auto, {', '.join(BACKENDS)}")
