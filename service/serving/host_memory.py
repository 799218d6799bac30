"""Host memory freed by one forward pass kept for the next, in the process that holds the models.

A forward pass on the CPU allocates its activations afresh, layer by layer: megabytes each (a
DeiT-tiny batch of 8 has 4.8 MB MLP activations). glibc's malloc gives such blocks back to the
kernel when they are freed (blocks over its mmap threshold, and the top of a heap over its trim
threshold), so the next pass touches new pages and takes a page fault per 4 kB: a fifth of a
one-thread DeiT-tiny pass went to GELU and the bias copies writing fresh pages (torch's profiler;
docs/serving.md). Setting glibc's thresholds keeps those blocks in the process for reuse, as
jemalloc or tcmalloc would, without preloading a library: blocks under 32 MB (glibc's largest
threshold) come from the heaps, and a heap gives back only what lies above 1 GiB of free space at
its top. The memory kept is what the largest batches held at once, which a caching allocator keeps
too (torch's CUDA allocator does).

Nothing happens where the C library has no `mallopt` (musl, macOS) or where the operator tuned
malloc already (`MALLOC_*_` variables, `GLIBC_TUNABLES`, or another allocator in `LD_PRELOAD`).
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum on 64-bit (half its 64 MB heap)
TRIM_THRESHOLD = 2**30
TOP_PAD = 64 * 2**20  # a heap grows by this much at a time, not page by page

_OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def operator_tuned(environ: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """What in `environ` says the operator chose the allocator's behaviour, if anything."""
    for name in _OPERATOR_SETTINGS:
        if name in environ:
            return name
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    if any(lib in environ.get("LD_PRELOAD", "") for lib in ("jemalloc", "tcmalloc", "mimalloc")):
        return "LD_PRELOAD"
    return None


def keep_freed_host_memory() -> bool:
    """Set glibc's malloc to keep freed blocks for reuse (see the module's docstring); True if set."""
    chosen = operator_tuned()
    if chosen is not None:
        log.info("host memory: the allocator as %s sets it", chosen)
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    wanted = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD))
    if not all(mallopt(option, value) == 1 for option, value in wanted):
        return False  # a C library whose mallopt takes none of these (musl's accepts nothing)
    log.info(
        "host memory: freed blocks under %d MB kept for the next forward pass (MAAS_HOST_MEMORY_REUSE)",
        MMAP_THRESHOLD // 2**20,
    )
    return True
