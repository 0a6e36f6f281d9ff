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


class KVCache:
    """Slot `s` of a pool holds the token at offset `s % block_size` of block `s // block_size`."""

    def __init__(self, spec: KVCacheSpec, num_blocks: int, device: torch.device | str = "cpu"):
        self.spec = spec
        self.num_blocks = num_blocks
        num_slots = num_blocks * spec.block_size
        shape = (num_slots, spec.num_kv_heads, spec.head_dim)  # [slots, KVH, D]
        self.keys = [
            torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)
        ]
        self.values = [
            torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)
        ]

    @property
    def num_bytes(self) -> int:
        return self.num_blocks * self.spec.bytes_per_block

    def fill_(self, value: float) -> None:
        """Writes every slot (commits the memory pages up front)."""
        for pool in (*self.keys, *self.values):
            pool.fill_(value)
