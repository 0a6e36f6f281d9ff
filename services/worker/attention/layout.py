"""Where each request's tokens sit in a flat ragged batch, and where their KV lives."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class BatchLayout:
    """One step's batch, shared by every attention backend and every layer.

    Request i owns query tokens [query_start[i], query_start[i] + num_query[i]) of
    the flat batch; they are positions [context_len[i] - num_query[i], context_len[i])
    of its sequence, whose KV lives in the blocks block_tables[i].
    """

    query_start: list[int]
    num_query: list[int]
    context_len: list[int]
    block_tables: list[list[int]]
    block_size: int
    slot_mapping: torch.Tensor  # [T] cache slot of each new token
    device: torch.device

    @property
    def num_seqs(self) -> int:
        return len(self.num_query)

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.numel())

    def padded_block_tables(self, rows: list[int]) -> torch.Tensor:
        """[len(rows), max blocks] block ids of the given requests, padded with 0."""
        width = max(len(self.block_tables[i]) for i in rows)
        table = torch.zeros((len(rows), width), dtype=torch.int32)
        for r, i in enumerate(rows):
            table[r, : len(self.block_tables[i])] = torch.tensor(
                self.block_tables[i], dtype=torch.int32
            )
        return table.to(self.device)

    def context_slots(self, i: int) -> torch.Tensor:
        """[context_len[i]] cache slots of request i's whole context."""
        pos = torch.arange(self.context_len[i])
        table = torch.tensor(self.block_tables[i], dtype=torch.long)
        return (table[pos // self.block_size] * self.block_size + pos % self.block_size).to(
            self.device
        )
