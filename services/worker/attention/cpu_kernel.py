"""A C++ paged-attention kernel for decode queries on CPU, compiled on first use.

On CPU, gather + SDPA copies every decode's context into a buffer and then runs
SDPA, whose work per (sequence, head) at one query is mostly overhead. This
kernel (`paged_decode.cpp`) reads keys and values in place from the head-major
pools: one pass for the scores, one for the values, threads over (sequence, KV
head). torch.utils.cpp_extension builds it on first use (under a minute; cached
by source hash under the cache folder, one build shared by all processes through
its file lock). Where it cannot be built (no C++ compiler or ninja) the torch
backend keeps gather + SDPA and the log says why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import torch

from sarathi_serve.worker.cpu_build import build_cpu_extension

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("paged_decode.cpp")


class PagedDecode(Protocol):
    def __call__(
        self,
        q: torch.Tensor,  # [S, H, D]
        k_pool: torch.Tensor,  # [KVH, slots, D]
        v_pool: torch.Tensor,
        block_tables: torch.Tensor,  # [S, W]
        context_lens: torch.Tensor,  # [S]
        block_size: int,
        scale: float,
        window: int,  # 0: none
    ) -> torch.Tensor: ...


def load_paged_decode(cache_dir: Path | None = None) -> PagedDecode | None:
    """The compiled kernel, or None where it cannot be built here."""
    module = build_cpu_extension("sarathi_paged_decode", SOURCE, cache_dir)
    if module is None:
        log.warning("CPU paged-decode kernel unavailable; using gather + SDPA")
        return None
    return module.paged_decode  # type: ignore[no-any-return]


if __name__ == "__main__":  # `python -m sarathi_serve.worker.attention.cpu_kernel`: build now
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(0 if load_paged_decode() is not None else 1)
