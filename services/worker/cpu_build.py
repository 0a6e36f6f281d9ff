"""C++ extensions for CPU workers, compiled on first use and cached.

torch.utils.cpp_extension builds each source once (under a minute) into a folder
named by torch's version and the instruction set, under the cache folder; a
changed source rebuilds (cpp_extension hashes it), and its file lock lets many
processes share one build. Where nothing can be built (no C++ compiler or ninja)
the caller falls back to plain torch ops and the log says why.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from types import ModuleType

import torch

from sarathi_serve.common.models import default_cache_dir

log = logging.getLogger(__name__)


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


def build_cpu_extension(
    name: str, source: Path, cache_dir: Path | None = None
) -> ModuleType | None:
    """The extension module `name` built from `source`, or None where it cannot be built."""
    from torch.utils import cpp_extension

    isa, isa_flags = _isa_flags()
    build = (cache_dir or default_cache_dir()) / "kernels" / f"torch-{torch.__version__}-{isa}"
    try:
        build.mkdir(parents=True, exist_ok=True)
        return cpp_extension.load(  # type: ignore[no-any-return]
            name=name,
            sources=[str(source)],
            build_directory=str(build),
            extra_cflags=["-O3", "-ffast-math", "-fopenmp", *isa_flags],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:
        log.warning("C++ extension %s could not be built: %s", name, e)
        return None
