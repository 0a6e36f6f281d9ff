"""Paged attention with PyTorch FlexAttention: the GPU path of a stock torch + Triton.

The whole KV pool is one long key sequence; a mask function keeps each query
token to the slots of its own request's blocks at positions it may see (causal,
optionally windowed). A block may be in several requests' tables (a shared cached
prefix), always at the same index, since a shared block holds the same positions.
The block mask is built from the step's block tables, so the kernel skips every KV
tile that holds none of a query tile's context. On CUDA the kernel is compiled
(Triton); elsewhere it runs unfused, for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from sarathi_serve.worker.attention.layout import BatchLayout
from sarathi_serve.worker.kv_cache import HEAD_MAJOR


@dataclass(slots=True)
class FlexMetadata:
    layout: BatchLayout
    q_seq: torch.Tensor  # [T] request index of each query token
    q_pos: torch.Tensor  # [T] position of each query token in its sequence
    kv_len: int  # slots [0, kv_len) hold every context of this step
    holds: torch.Tensor  # [R, kv_len / block_size] whether request r's table has the block
    block_rank: torch.Tensor  # [kv_len / block_size] index of the block in the tables holding it
    _masks: dict[int | None, BlockMask] = field(default_factory=dict)

    def block_mask(self, window: int | None) -> BlockMask:
        if window not in self._masks:
            bs = self.layout.block_size
            q_seq, q_pos, holds, rank = self.q_seq, self.q_pos, self.holds, self.block_rank

            def visible(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
                block = kv_idx // bs
                kv_pos = rank[block] * bs + kv_idx % bs
                seen = holds[q_seq[q_idx], block] & (kv_pos <= q_pos[q_idx])
                if window is not None:
                    seen = seen & (kv_pos > q_pos[q_idx] - window)
                return seen

            self._masks[window] = create_block_mask(
                visible, None, None, self.q_seq.numel(), self.kv_len, device=str(self.q_seq.device)
            )
        return self._masks[window]


class FlexBackend:
    name = "flex"
    kv_layout = HEAD_MAJOR

    def __init__(self) -> None:
        self._attend: Any = flex_attention
        self._compiled = False

    def prepare(self, layout: BatchLayout) -> FlexMetadata:
        dev = layout.device
        if dev.type == "cuda" and not self._compiled:
            self._attend = torch.compile(flex_attention, dynamic=True)
            self._compiled = True
        num_blocks = 1 + max(max(t) for t in layout.block_tables)
        holds = torch.zeros((len(layout.block_tables), num_blocks), dtype=torch.bool)
        rank = torch.zeros((num_blocks,), dtype=torch.long)
        q_seq: list[int] = []
        q_pos: list[int] = []
        for i, table in enumerate(layout.block_tables):
            ids = torch.tensor(table, dtype=torch.long)
            holds[i, ids] = True
            rank[ids] = torch.arange(len(table))
            n, ctx = layout.num_query[i], layout.context_len[i]
            q_seq += [i] * n
            q_pos += range(ctx - n, ctx)
        return FlexMetadata(
            layout=layout,
            q_seq=torch.tensor(q_seq, device=dev),
            q_pos=torch.tensor(q_pos, device=dev),
            kv_len=num_blocks * layout.block_size,
            holds=holds.to(dev),
            block_rank=rank.to(dev),
        )

    def forward(
        self,
        q: torch.Tensor,  # [T, H, D]
        k: torch.Tensor,  # [T, KVH, D] (read from the pool instead)
        v: torch.Tensor,
        k_pool: torch.Tensor,  # [KVH, slots, D]
        v_pool: torch.Tensor,
        meta: FlexMetadata,
        scale: float | None,
        window: int | None,
    ) -> torch.Tensor:
        k = k_pool[:, : meta.kv_len].unsqueeze(0)  # [1, KVH, kv_len, D]
        v = v_pool[:, : meta.kv_len].unsqueeze(0)
        out = self._attend(
            q.transpose(0, 1).unsqueeze(0),  # [1, H, T, D]
            k,
            v,
            block_mask=meta.block_mask(window),
            scale=scale,
            enable_gqa=True,
        )
        assert isinstance(out, torch.Tensor)
        return out[0].transpose(0, 1)  # [T, H, D]
