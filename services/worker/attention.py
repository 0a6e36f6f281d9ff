"""Paged attention over a flat ragged batch, plugged into transformers.

`register()` adds an attention implementation named `sarathi_paged` to
transformers' `AttentionInterface`. Each decoder layer then calls `paged_attention`
with its q/k/v after RoPE (from the `position_ids` we pass) and the batch's
`AttentionMetadata`, passed as the `attn_metadata` keyword of `model(...)`. The
function writes the new keys/values into the paged cache and attends over each
sequence's cached context. Any Llama-like architecture of transformers works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sarathi_serve.worker.kv_cache import KVCache

ATTENTION_NAME = "sarathi_paged"


@dataclass(slots=True)
class PrefillChunk:
    """A chunk of `end - start` query tokens whose context is `key_slots`."""

    start: int  # first token of the chunk in the flat batch
    end: int
    key_slots: torch.Tensor  # [ctx] cache slots of the whole context, chunk included
    mask: torch.Tensor | None  # [n, ctx] bool, None when the chunk is the whole context


@dataclass(slots=True)
class AttentionMetadata:
    """Everything the attention of one step needs, shared by all layers."""

    kv_cache: KVCache
    slot_mapping: torch.Tensor  # [T] cache slot of each new token
    decode_token_idx: torch.Tensor  # [Sd] flat index of each decode token
    decode_key_slots: torch.Tensor  # [Sd, L] context slots, padded
    decode_key_mask: torch.Tensor  # [Sd, 1, 1, L] True where a slot is real context
    prefills: list[PrefillChunk]


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [1, H, T, D]
    key: torch.Tensor,  # [1, KVH, T, D]
    value: torch.Tensor,  # [1, KVH, T, D]
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    attn_metadata: AttentionMetadata | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    if attn_metadata is None:
        raise ValueError(f"{ATTENTION_NAME} attention needs attn_metadata=")
    meta = attn_metadata
    layer = module.layer_idx  # type: ignore[attr-defined]
    k_cache, v_cache = meta.kv_cache.keys[layer], meta.kv_cache.values[layer]
    k_cache.index_copy_(0, meta.slot_mapping, key[0].transpose(0, 1))
    v_cache.index_copy_(0, meta.slot_mapping, value[0].transpose(0, 1))

    q = query[0].transpose(0, 1)  # [T, H, D]
    out = torch.empty_like(q)
    if meta.decode_token_idx.numel():
        qd = q[meta.decode_token_idx].unsqueeze(2)  # [Sd, H, 1, D]
        kd = k_cache[meta.decode_key_slots].transpose(1, 2)  # [Sd, KVH, L, D]
        vd = v_cache[meta.decode_key_slots].transpose(1, 2)
        od = F.scaled_dot_product_attention(
            qd, kd, vd, attn_mask=meta.decode_key_mask, scale=scaling, enable_gqa=True
        )
        out[meta.decode_token_idx] = od.squeeze(2)
    for chunk in meta.prefills:
        qp = q[chunk.start : chunk.end].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        kp = k_cache[chunk.key_slots].transpose(0, 1).unsqueeze(0)  # [1, KVH, ctx, D]
        vp = v_cache[chunk.key_slots].transpose(0, 1).unsqueeze(0)
        op = F.scaled_dot_product_attention(
            qp,
            kp,
            vp,
            attn_mask=chunk.mask,
            is_causal=chunk.mask is None,
            scale=scaling,
            enable_gqa=True,
        )
        out[chunk.start : chunk.end] = op[0].transpose(0, 1)
    return out.unsqueeze(0), None  # [1, T, H, D]


def register() -> str:
    """Makes `attn_implementation=ATTENTION_NAME` available to transformers."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, paged_attention)
    return ATTENTION_NAME
