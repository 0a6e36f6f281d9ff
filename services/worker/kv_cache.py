"""Paged KV cache: fixed-size blocks, one key and one value pool per layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class KVCacheSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")

    @property
    def bytes_per_block(self) -> int:
        # keys + values, every layer
        elem = torch.tensor([], dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem

    def num_blocks_for(self, budget_bytes: int) -> int:
        num_blocks = budget_bytes // self.bytes_per_block
        if num_blocks < 1:
            raise ValueError(
                f"a KV budget of {budget_bytes} bytes holds no block of "
                f"{self.bytes_per_block} bytes: raise --kv-cache-gb"
            )
        return int(num_blocks)


HEAD_MAJOR = "head_major"  # pools [KVH, slots, D]: a head's context is one [L, D] matrix
TOKEN_MAJOR = "token_major"  # pools [slots, KVH, D]: flash-attn's paged layout


class KVCache:
    """Slot `s` of a pool holds the token at offset `s % block_size` of block `s // block_size`.

    The layout is the attention backend's choice: head-major lets a gathered
    context feed SDPA as contiguous [L, D] matrices per head.
    """

    def __init__(
        self,
        spec: KVCacheSpec,
        num_blocks: int,
        device: torch.device | str = "cpu",
        layout: str = HEAD_MAJOR,
    ):
        if layout not in (HEAD_MAJOR, TOKEN_MAJOR):
            raise ValueError(f"unknown KV layout {layout!r}")
        self.spec = spec
        self.num_blocks = num_blocks
        self.layout = layout
        num_slots = num_blocks * spec.block_size
        if layout == HEAD_MAJOR:
            shape: tuple[int, ...] = (spec.num_kv_heads, num_slots, spec.head_dim)
        else:
            shape = (num_slots, spec.num_kv_heads, spec.head_dim)
        self.keys = [
            torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)
        ]
        self.values = [
            torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)
        ]

    @property
    def num_bytes(self) -> int:
        return self.num_blocks * self.spec.bytes_per_block

    def write(
        self, layer: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> None:
        """Stores one step's keys/values [T, KVH, D] in their slots."""
        if self.layout == HEAD_MAJOR:
            self.keys[layer].index_copy_(1, slots, keys.transpose(0, 1))
            self.values[layer].index_copy_(1, slots, values.transpose(0, 1))
        else:
            self.keys[layer].index_copy_(0, slots, keys)
            self.values[layer].index_copy_(0, slots, values)

    def read(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [n, KVH, D] of the given slots (for tests and references)."""
        if self.layout == HEAD_MAJOR:
            return self.keys[layer][:, slots].transpose(0, 1), self.values[layer][
                :, slots
            ].transpose(0, 1)
        return self.keys[layer][slots], self.values[layer][slots]

    def fill_(self, value: float) -> None:
        """Writes every slot (commits the memory pages up front)."""
        for pool in (*self.keys, *self.values):
            pool.fill_(value)
