"""Paged attention in plain PyTorch: correct on CPU and GPU, the CPU's fast path.

Decodes (one query token each) run as one batched SDPA call over their gathered,
padded contexts; prefill chunks run one SDPA call each (a step has few).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sarathi_serve.worker.attention.layout import BatchLayout
from sarathi_serve.worker.kv_cache import KVCache


@dataclass(slots=True)
class _Chunk:
    start: int
    end: int
    key_slots: torch.Tensor  # [ctx]
    query_pos: torch.Tensor  # [n] positions of the chunk's tokens
    key_pos: torch.Tensor  # [ctx]


@dataclass(slots=True)
class TorchMetadata:
    decode_idx: torch.Tensor  # [Sd] flat index of each decode token
    decode_slots: torch.Tensor  # [Sd, L] context slots, padded
    decode_lens: torch.Tensor  # [Sd]
    chunks: list[_Chunk]
    _masks: dict[tuple[str, int, int | None], torch.Tensor | None] = field(default_factory=dict)

    def decode_mask(self, window: int | None) -> torch.Tensor:
        """[Sd, 1, 1, L] True where a key is visible to the decode query."""
        key = ("decode", 0, window)
        if key not in self._masks:
            pos = torch.arange(self.decode_slots.shape[1], device=self.decode_slots.device)[None, :]
            mask = pos < self.decode_lens[:, None]
            if window is not None:
                mask &= pos > (self.decode_lens[:, None] - 1 - window)
            self._masks[key] = mask[:, None, None, :]
        cached = self._masks[key]
        assert cached is not None
        return cached

    def chunk_mask(self, i: int, window: int | None) -> torch.Tensor | None:
        """[n, ctx] causal (and windowed) mask; None when plain causal SDPA does."""
        key = ("chunk", i, window)
        if key not in self._masks:
            c = self.chunks[i]
            if window is None and c.query_pos[0] == 0:
                self._masks[key] = None
            else:
                visible = c.key_pos[None, :] <= c.query_pos[:, None]
                if window is not None:
                    visible &= c.key_pos[None, :] > c.query_pos[:, None] - window
                self._masks[key] = visible
        return self._masks[key]


class TorchBackend:
    name = "torch"

    def prepare(self, layout: BatchLayout) -> TorchMetadata:
        decodes = [i for i in range(layout.num_seqs) if layout.num_query[i] == 1]
        dev = layout.device
        chunks = []
        for i in range(layout.num_seqs):
            if layout.num_query[i] == 1:
                continue
            ctx, n = layout.context_len[i], layout.num_query[i]
            chunks.append(
                _Chunk(
                    start=layout.query_start[i],
                    end=layout.query_start[i] + n,
                    key_slots=layout.context_slots(i),
                    query_pos=torch.arange(ctx - n, ctx, device=dev),
                    key_pos=torch.arange(ctx, device=dev),
                )
            )
        if decodes:
            bs = layout.block_size
            tables = layout.padded_block_tables(decodes).long()  # [Sd, B]
            lens = torch.tensor([layout.context_len[i] for i in decodes], device=dev)
            width = int(lens.max())
            offsets = torch.arange(bs, device=dev)
            slots = (tables[:, :, None] * bs + offsets).reshape(len(decodes), -1)[:, :width]
        else:
            slots = torch.zeros((0, 0), dtype=torch.long, device=dev)
            lens = torch.zeros((0,), dtype=torch.long, device=dev)
        idx = torch.tensor([layout.query_start[i] for i in decodes], dtype=torch.long, device=dev)
        return TorchMetadata(idx, slots, lens, chunks)

    def forward(
        self,
        q: torch.Tensor,  # [T, H, D]
        k_cache: torch.Tensor,  # [slots, KVH, D], this step's keys already written
        v_cache: torch.Tensor,
        meta: TorchMetadata,
        scale: float | None,
        window: int | None,
    ) -> torch.Tensor:  # [T, H, D]
        out = torch.empty_like(q)
        if meta.decode_idx.numel():
            qd = q[meta.decode_idx].unsqueeze(2)  # [Sd, H, 1, D]
            kd = k_cache[meta.decode_slots].transpose(1, 2)  # [Sd, KVH, L, D]
            vd = v_cache[meta.decode_slots].transpose(1, 2)
            mask = meta.decode_mask(window)
            od = F.scaled_dot_product_attention(
                qd, kd, vd, attn_mask=mask, scale=scale, enable_gqa=True
            )
            out[meta.decode_idx] = od.squeeze(2)
        for i, c in enumerate(meta.chunks):
            qp = q[c.start : c.end].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
            kp = k_cache[c.key_slots].transpose(0, 1).unsqueeze(0)  # [1, KVH, ctx, D]
            vp = v_cache[c.key_slots].transpose(0, 1).unsqueeze(0)
            chunk_mask = meta.chunk_mask(i, window)
            op = F.scaled_dot_product_attention(
                qp,
                kp,
                vp,
                attn_mask=chunk_mask,
                is_causal=chunk_mask is None,
                scale=scale,
                enable_gqa=True,
            )
            out[c.start : c.end] = op[0].transpose(0, 1)
        return out


def write_kv(
    cache: KVCache, layer: int, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> None:
    """Stores this step's keys/values [T, KVH, D] in their slots."""
    cache.keys[layer].index_copy_(0, slot_mapping, k)
    cache.values[layer].index_copy_(0, slot_mapping, v)
