"""What the process's allocator does with freed memory (glibc, Linux).

By default glibc serves each block over 32 MB with a fresh ``mmap`` and returns the top of the heap to the kernel
once enough of it is free, so a CPU train step takes its large activations as fresh pages and faults each 4 KiB
page in again, every step. :func:`retain_freed_memory` keeps freed memory in the process for reuse instead, as
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment would (close to what jemalloc or
tcmalloc do); the process then holds on to its peak memory. The README's speed section gives the measured effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def retain_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse (no ``mmap`` per large block, no trimming of the heap). Returns
    False, changing nothing, where the C library has no glibc ``mallopt`` (macOS, Windows, musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
