"""Keep freed memory in the process (glibc): steadier, faster CPU forwards and latency figures.

With glibc's defaults a block above the mmap threshold (128 kB, raised on the fly up to 32 MB) is
mapped from the system for each allocation and unmapped at its free, and the heap is trimmed back
whenever enough is free at its top. A forward at batch 32 x 128 allocates activation buffers of
tens of MB, so a fresh process page-faults them in again at every forward: MiniLM's dense forward
took 25-30% longer than in a process whose heap had been fragmented by training, and a pruned
model (smaller buffers) 0-16% longer, so speedups timed in the two states disagree by up to 16%
(benchmarks/README.md, "the gap is the allocator"). A process that compresses models calls
keep_freed_memory() once at start: blocks up to 32 MB come from the heap and the heap is not
trimmed, from the first forward on, so the latency table a `speedup` budget plans with and the
delivered model's timing are taken in the same state (the state a long-running server with
these settings, or with jemalloc, serves in).

Process-wide: the library's compress() does not call it (a host application decides its own
allocator); the worker's job processes and `vtrans compress` do.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024      # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 2 ** 31 - 1           # mallopt takes an int: in effect, never trim
# The same settings for a process started with them (a server; benchmarks/speedup_check.py)
KEEP_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def keep_freed_memory() -> bool:
    """Apply the settings; True when glibc accepted them (False elsewhere: macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.warning("mallopt refused the keep-freed-memory settings; latency figures may vary with the process's state")
    return ok
