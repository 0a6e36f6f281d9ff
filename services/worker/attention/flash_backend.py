"""Paged attention with flash-attn's `flash_attn_varlen_func` and a block table (CUDA).

flash-attn's paged KV needs blocks of a multiple of 256 tokens; the worker's
`--block-size` must be set accordingly (select_backend says so when it is not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sarathi_serve.worker.attention import FLASH_BLOCK_MULTIPLE
from sarathi_serve.worker.attention.layout import BatchLayout
from sarathi_serve.worker.kv_cache import TOKEN_MAJOR


@dataclass(slots=True)
class FlashMetadata:
    cu_seqlens_q: torch.Tensor  # [S + 1] int32
    cu_seqlens_k: torch.Tensor  # [S + 1] int32
    max_seqlen_q: int
    max_seqlen_k: int
    block_table: torch.Tensor  # [S, max blocks] int32
    block_size: int


class FlashAttnBackend:
    name = "flash"
    kv_layout = TOKEN_MAJOR

    def __init__(self) -> None:
        from flash_attn import flash_attn_varlen_func  # optional dependency: `.[gpu]`

        self._varlen = flash_attn_varlen_func

    def prepare(self, layout: BatchLayout) -> FlashMetadata:
        if layout.block_size % FLASH_BLOCK_MULTIPLE:
            raise ValueError(
                f"flash-attn needs --block-size a multiple of {FLASH_BLOCK_MULTIPLE}, "
                f"got {layout.block_size}"
            )
        dev = layout.device
        q_lens = torch.tensor(layout.num_query, dtype=torch.int32)
        k_lens = torch.tensor(layout.context_len, dtype=torch.int32)
        zero = torch.zeros(1, dtype=torch.int32)
        return FlashMetadata(
            cu_seqlens_q=torch.cat([zero, q_lens.cumsum(0, dtype=torch.int32)]).to(dev),
            cu_seqlens_k=torch.cat([zero, k_lens.cumsum(0, dtype=torch.int32)]).to(dev),
            max_seqlen_q=max(layout.num_query),
            max_seqlen_k=max(layout.context_len),
            block_table=layout.padded_block_tables(list(range(layout.num_seqs))),
            block_size=layout.block_size,
        )

    def forward(
        self,
        q: torch.Tensor,  # [T, H, D]
        k: torch.Tensor,  # [T, KVH, D] (read from the pool instead)
        v: torch.Tensor,
        k_cache: torch.Tensor,  # [slots, KVH, D]
        v_cache: torch.Tensor,
        meta: FlashMetadata,
        scale: float | None,
        window: int | None,
    ) -> torch.Tensor:
        _, kv_heads, head_dim = k_cache.shape
        paged = (-1, meta.block_size, kv_heads, head_dim)  # [blocks, block_size, KVH, D]
        out = self._varlen(
            q,
            k_cache.view(paged),
            v_cache.view(paged),
            meta.cu_seqlens_q,
            meta.cu_seqlens_k,
            meta.max_seqlen_q,
            meta.max_seqlen_k,
            softmax_scale=scale,
            causal=True,  # aligned bottom-right: a chunk sees its whole prefix
            window_size=(-1, -1) if window is None else (window - 1, 0),
            block_table=meta.block_table,
        )
        assert isinstance(out, torch.Tensor)
        return out
