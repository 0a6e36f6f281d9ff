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
import platform
from pathlib import Path
from typing import Protocol

import torch

from sarathi_serve.common.models import default_cache_dir

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


def _isa_flags() -> tuple[str, list[str]]:
    """The instruction set to compile for: AVX2 + FMA where this CPU has them
    (x86-64-v3), else the compiler's default. Part of the build folder's name, so
    a cache folder shared by different machines never loads the wrong build."""
    if platform.machine() in ("x86_64", "AMD64"):
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            flags = []
        if "avx2" in flags and "fma" in flags:
            return "x86-64-v3", ["-march=x86-64-v3"]
    return "generic", []


def load_paged_decode(cache_dir: Path | None = None) -> PagedDecode | None:
    """The compiled kernel, or None where it cannot be built here."""
    from torch.utils import cpp_extension

    isa, isa_flags = _isa_flags()
    build = (cache_dir or default_cache_dir()) / "kernels" / f"torch-{torch.__version__}-{isa}"
    try:
        build.mkdir(parents=True, exist_ok=True)
        module = cpp_extension.load(
            name="sarathi_paged_decode",
            sources=[str(SOURCE)],
            build_directory=str(build),
            extra_cflags=["-O3", "-ffast-math", "-fopenmp", *isa_flags],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:
        log.warning("CPU paged-decode kernel unavailable (%s); using gather + SDPA", e)
        return None
    return module.paged_decode  # type: ignore[no-any-return]


if __name__ == "__main__":  # `python -m sarathi_serve.worker.attention.cpu_kernel`: build now
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(0 if load_paged_decode() is not None else 1)
