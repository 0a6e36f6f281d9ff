"""Paged attention in PyTorch: correct on CPU and GPU, the CPU's fast path.

Decodes (one query token each) run, on CPU in float32, through a C++ kernel that
reads the paged pools in place (`paged_decode.cpp`, built on first use); elsewhere
as one batched SDPA call over their gathered, padded contexts. A prompt's first
chunk needs no cache read at all (its context is the step's own keys); first
chunks of equal length share one batched SDPA call. Later chunks run one call each
over their gathered context (a step has few). Contexts are gathered a whole block
at a time into reused buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sarathi_serve.worker.attention.cpu_kernel import PagedDecode
from sarathi_serve.worker.attention.layout import BatchLayout
from sarathi_serve.worker.kv_cache import HEAD_MAJOR


@dataclass(slots=True)
class _Chunk:
    start: int
    end: int
    blocks: torch.Tensor  # [nb] the request's block table
    query_pos: torch.Tensor  # [n] positions of the chunk's tokens
    key_pos: torch.Tensor  # [ctx]


@dataclass(slots=True)
class TorchMetadata:
    num_decodes: int  # Sd
    decode_idx: torch.Tensor  # [Sd] flat index of each decode token
    decode_blocks: torch.Tensor  # [Sd, B] block tables, padded
    decode_lens: torch.Tensor  # [Sd]
    chunks: list[_Chunk]  # chunks that continue a prompt: context from the cache
    block_size: int
    first_chunks: list[torch.Tensor]  # [P, n] flat token indices of first chunks of length n
    _masks: dict[tuple[str, int, int | None], torch.Tensor] = field(default_factory=dict)
    _rows: dict[int, torch.Tensor] = field(default_factory=dict)

    def pool_rows(self, i: int, kv_heads: int, num_blocks: int) -> torch.Tensor:
        """[KVH * n] rows of a `[KVH * num_blocks, bs * D]` pool view holding the
        blocks of the decodes (i = -1) or of continuing chunk i, head by head."""
        if i not in self._rows:
            blocks = self.decode_blocks.view(-1) if i < 0 else self.chunks[i].blocks
            heads = torch.arange(kv_heads, device=blocks.device)[:, None] * num_blocks
            self._rows[i] = (heads + blocks[None, :]).view(-1)
        return self._rows[i]

    def decode_mask(self, window: int | None) -> torch.Tensor:
        """[Sd, 1, 1, L]: the keys each decode query sees (padding is past its position)."""
        key = ("decode", 0, window)
        if key not in self._masks:
            width = self.decode_blocks.shape[1] * self.block_size
            key_pos = torch.arange(width, device=self.decode_blocks.device)
            query_pos = self.decode_lens - 1  # [Sd]
            self._masks[key] = visible_keys(query_pos, key_pos, window)[:, None, None, :]
        return self._masks[key]

    def chunk_mask(self, i: int, window: int | None) -> torch.Tensor:
        """[n, ctx]: the keys each query of a continuing chunk sees."""
        key = ("chunk", i, window)
        if key not in self._masks:
            c = self.chunks[i]
            self._masks[key] = visible_keys(c.query_pos, c.key_pos, window)
        return self._masks[key]


def visible_keys(
    query_pos: torch.Tensor, key_pos: torch.Tensor, window: int | None
) -> torch.Tensor:
    """[Q, K] True where key position k is visible to query position q:
    causal (k <= q) and, with a sliding window, k > q - window (Mistral's rule)."""
    visible = key_pos[None, :] <= query_pos[:, None]
    if window is not None:
        visible &= key_pos[None, :] > query_pos[:, None] - window
    return visible


class TorchBackend:
    name = "torch"
    kv_layout = HEAD_MAJOR

    def __init__(self, decode_kernel: PagedDecode | None = None) -> None:
        self.decode_kernel = decode_kernel
        # Gathered contexts land in buffers reused by every layer and step: a
        # fresh tensor of tens of MB per layer costs more in page faults (the
        # CPU allocator returns big blocks to the OS) than the copy itself.
        self._workspace: dict[str, torch.Tensor] = {}

    def _gather(self, name: str, pool_rows: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """pool_rows[rows] -> [len(rows), bs*D], into a reused buffer. Rows of a 2-D
        view are contiguous runs: index_select over dim 0 copies them at close to
        memory speed (about twice as fast as selecting blocks along dim 1 of the pool)."""
        shape = (rows.numel(), pool_rows.shape[1])
        size = shape[0] * shape[1]
        buf = self._workspace.get(name)
        if (
            buf is None
            or buf.numel() < size
            or buf.dtype != pool_rows.dtype
            or buf.device != pool_rows.device
        ):
            buf = torch.empty(size, dtype=pool_rows.dtype, device=pool_rows.device)
            self._workspace[name] = buf
        out = buf[:size].view(shape)
        torch.index_select(pool_rows, 0, rows, out=out)
        return out

    def _kernel_for(self, q: torch.Tensor, k_pool: torch.Tensor) -> PagedDecode | None:
        """The C++ decode kernel where it applies (CPU, float32), else None."""
        fits = q.device.type == "cpu" and q.dtype == k_pool.dtype == torch.float32
        return self.decode_kernel if fits else None

    def prepare(self, layout: BatchLayout) -> TorchMetadata:
        decodes = [i for i in range(layout.num_seqs) if layout.num_query[i] == 1]
        dev = layout.device
        chunks = []
        first_starts: dict[int, list[int]] = {}
        for i in range(layout.num_seqs):
            if layout.num_query[i] == 1:
                continue
            ctx, n = layout.context_len[i], layout.num_query[i]
            if ctx == n:
                first_starts.setdefault(n, []).append(layout.query_start[i])
                continue
            chunks.append(
                _Chunk(
                    start=layout.query_start[i],
                    end=layout.query_start[i] + n,
                    blocks=torch.tensor(layout.block_tables[i], dtype=torch.long, device=dev),
                    query_pos=torch.arange(ctx - n, ctx, device=dev),
                    key_pos=torch.arange(ctx, device=dev),
                )
            )
        if decodes:
            tables = layout.padded_block_tables(decodes).long()  # [Sd, B]
            lens = torch.tensor([layout.context_len[i] for i in decodes], device=dev)
        else:
            tables = torch.zeros((0, 0), dtype=torch.long, device=dev)
            lens = torch.zeros((0,), dtype=torch.long, device=dev)
        idx = torch.tensor([layout.query_start[i] for i in decodes], dtype=torch.long, device=dev)
        first_chunks = [
            (torch.tensor(starts, device=dev)[:, None] + torch.arange(n, device=dev)).long()
            for n, starts in first_starts.items()
        ]
        return TorchMetadata(
            len(decodes), idx, tables, lens, chunks, layout.block_size, first_chunks
        )

    def forward(
        self,
        q: torch.Tensor,  # [T, H, D]
        k: torch.Tensor,  # [T, KVH, D] this step's keys (also written to k_pool)
        v: torch.Tensor,
        k_pool: torch.Tensor,  # [KVH, slots, D]
        v_pool: torch.Tensor,
        meta: TorchMetadata,
        scale: float | None,
        window: int | None,
    ) -> torch.Tensor:  # [T, H, D]
        """Attention of the step's queries: first chunks over their own keys, the
        others over the cache (which already holds this step's keys)."""
        out = torch.empty_like(q)
        for idx in meta.first_chunks:  # idx: [P, n]
            n = idx.shape[1]
            pos = torch.arange(n, device=q.device)
            mask = None if window is None or window >= n else visible_keys(pos, pos, window)
            o1 = F.scaled_dot_product_attention(
                q[idx].transpose(1, 2),  # [P, H, n, D]
                k[idx].transpose(1, 2),  # [P, KVH, n, D]
                v[idx].transpose(1, 2),
                attn_mask=mask,
                is_causal=mask is None,
                scale=scale,
                enable_gqa=True,
            )
            out[idx] = o1.transpose(1, 2)
        if meta.num_decodes or meta.chunks:
            self._attend_cached(q, k_pool, v_pool, meta, scale, window, out)
        return out

    def _attend_cached(
        self,
        q: torch.Tensor,  # [T, H, D]
        k_pool: torch.Tensor,  # [KVH, slots, D]
        v_pool: torch.Tensor,
        meta: TorchMetadata,
        scale: float | None,
        window: int | None,
        out: torch.Tensor,  # [T, H, D] written at the decode and continuing-chunk rows
    ) -> None:
        """The queries whose context is (partly) in the cache: decodes and the chunks
        that continue a prompt."""
        kv_heads, num_slots, head_dim = k_pool.shape
        num_blocks = num_slots // meta.block_size
        # One row per (head, block): whole [bs, D] runs, several times faster on CPU
        # than advanced indexing by token.
        k_rows = k_pool.view(kv_heads * num_blocks, meta.block_size * head_dim)
        v_rows = v_pool.view(kv_heads * num_blocks, meta.block_size * head_dim)
        kernel = self._kernel_for(q, k_pool)
        if meta.num_decodes and kernel is not None:
            out[meta.decode_idx] = kernel(
                q[meta.decode_idx],
                k_pool,
                v_pool,
                meta.decode_blocks,
                meta.decode_lens,
                meta.block_size,
                head_dim**-0.5 if scale is None else scale,
                window or 0,
            )
        elif meta.num_decodes:
            rows = meta.pool_rows(-1, kv_heads, num_blocks)
            shape = (kv_heads, meta.num_decodes, -1, head_dim)
            kd = self._gather("k", k_rows, rows).view(shape)
            vd = self._gather("v", v_rows, rows).view(shape)
            od = F.scaled_dot_product_attention(
                q[meta.decode_idx].unsqueeze(2),  # [Sd, H, 1, D]
                kd.permute(1, 0, 2, 3),  # [Sd, KVH, B * bs, D], each [L, D] contiguous
                vd.permute(1, 0, 2, 3),
                attn_mask=meta.decode_mask(window),
                scale=scale,
                enable_gqa=True,
            )
            out[meta.decode_idx] = od.squeeze(2)
        for i, c in enumerate(meta.chunks):
            ctx = c.key_pos.numel()
            rows = meta.pool_rows(i, kv_heads, num_blocks)
            kp = self._gather("k", k_rows, rows).view(kv_heads, -1, head_dim)[:, :ctx]
            vp = self._gather("v", v_rows, rows).view(kv_heads, -1, head_dim)[:, :ctx]
            op = F.scaled_dot_product_attention(
                q[c.start : c.end].transpose(0, 1).unsqueeze(0),  # [1, H, n, D]
                kp.unsqueeze(0),  # [1, KVH, ctx, D]
                vp.unsqueeze(0),
                attn_mask=meta.chunk_mask(i, window),
                scale=scale,
                enable_gqa=True,
            )
            out[c.start : c.end] = op[0].transpose(0, 1)
