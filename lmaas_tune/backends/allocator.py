"""Keep freed activation memory in the process (glibc on Linux).

A forward pass on the CPU allocates and frees buffers of the same few sizes over and over (a
projection's output, a norm's float32 copy, an activation). By default glibc returns large freed
blocks to the kernel (``munmap``, or trimming a thread's heap), so the next pass page-faults the
same memory in again and the kernel zeroes every page. Scoring runs in a worker thread, whose
heap glibc trims eagerly: measured on the embedded model, 0.1-0.6 million page faults per call and
up to a third of the CPU time spent in the kernel. Raising glibc's mmap and trim thresholds keeps
those blocks for reuse: the process keeps its peak activation memory instead of handing it back
between passes.

This changes how the whole process allocates, so it happens once, when a local backend on the CPU
is created, and ``LMAAS_TUNE_MALLOC=system`` leaves glibc's defaults alone. Elsewhere (not Linux,
another C library) it does nothing. Numbers are unaffected: it changes where memory comes from,
not what is computed.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["OPT_OUT", "keep_freed_memory"]

#: set this environment variable to ``system`` to keep glibc's allocation defaults
OPT_OUT = "LMAAS_TUNE_MALLOC"

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_LARGE = 1 << 30  # blocks below this come from (and go back to) the heap, not mmap
_LARGE_FALLBACK = 32 << 20  # the largest mmap threshold every 64-bit glibc accepts

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds, once per process; whether they are now raised."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get(OPT_OUT, "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already uses
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    gnu = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")  # other C libraries accept and ignore mallopt
    if not gnu:
        return False
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, _LARGE) == 1 or mallopt(_M_MMAP_THRESHOLD, _LARGE_FALLBACK) == 1
    return mmap_ok and mallopt(_M_TRIM_THRESHOLD, _LARGE) == 1
