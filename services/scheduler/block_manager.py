"""KV-block accounting of one worker: which blocks each request holds."""

from __future__ import annotations

from collections import deque

from sarathi_serve.scheduler.request import Request


class BlockManager:
    """Hands out fixed-size KV blocks; a request's blocks are `request.block_ids`.

    New requests are admitted only while `watermark` of the blocks stays free, so
    running requests can keep decoding without immediate preemption.
    """

    def __init__(self, num_blocks: int, block_size: int, watermark: float = 0.01):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}"
            )
        if not 0 <= watermark < 1:
            raise ValueError(f"watermark must be in [0, 1), got {watermark}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_watermark_blocks = int(watermark * num_blocks)
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def num_blocks_needed(self, request: Request, num_new_tokens: int) -> int:
        num_tokens = request.num_computed_tokens + num_new_tokens
        return max(0, -(-num_tokens // self.block_size) - len(request.block_ids))

    def can_allocate(self, request: Request, num_new_tokens: int, *, admit: bool = False) -> bool:
        """Whether `num_new_tokens` more tokens fit; `admit` applies the watermark."""
        reserve = self.num_watermark_blocks if admit else 0
        return self.num_blocks_needed(request, num_new_tokens) <= self.num_free_blocks - reserve

    def allocate(self, request: Request, num_new_tokens: int) -> None:
        needed = self.num_blocks_needed(request, num_new_tokens)
        if needed > len(self._free):
            raise RuntimeError(f"out of KV blocks: need {needed}, have {len(self._free)}")
        request.block_ids.extend(self._free.popleft() for _ in range(needed))

    def free(self, request: Request) -> None:
        self._free.extend(request.block_ids)
        request.block_ids = []
        request.num_blocks_sent = 0
