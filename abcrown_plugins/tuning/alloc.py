"""glibc allocator settings for the project's own process: large buffers reused, not re-mapped per batch.

glibc serves an allocation above its mmap threshold (128 KiB, raised dynamically
up to 32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` when freed, so
every batch of a hot loop whose activations exceed the threshold page-faults all
of them in again (zero-filled by the kernel). :func:`tune_allocator` raises the
mmap threshold to :data:`MMAP_THRESHOLD` and the trim threshold to
:data:`TRIM_THRESHOLD` with ``mallopt``, for this process only (``exec`` and
spawned worker processes start without it: the certify task calls it itself), so freed
batch buffers stay in the heap and the next batch reuses them. It is what
exporting ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` would do,
without asking the user to. Cost: up to ``TRIM_THRESHOLD`` of freed memory is
kept by the process instead of returned to the system.

Only on Linux with glibc (detected with ``os.confstr``); elsewhere (musl, macOS,
Windows) a no-op. Nothing is changed at import time.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "glibc_version", "tune_allocator"]

#: Allocations below this many bytes come from the heap (glibc's default is 128 KiB, dynamic up to 32 MiB).
MMAP_THRESHOLD = 1 << 30
#: Free memory at the top of the heap kept instead of returned to the system (glibc default 128 KiB).
TRIM_THRESHOLD = 1 << 30

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
_APPLIED: dict[str, bool] = {}


def glibc_version() -> str | None:
    """``"2.36"`` on Linux with glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        found = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None
    if not found or not found.startswith("glibc "):
        return None
    return found.split()[1]


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds (bytes) for this process; True when both were set.

    A no-op returning False where the C library is not glibc or refuses a value
    (glibc before 2.35 caps the mmap threshold at 32 MiB: then the largest
    accepted power of two is used). Idempotent: later calls with the same values do nothing.
    """
    if glibc_version() is None:
        return False
    wanted = f"{mmap_threshold},{trim_threshold}"
    if wanted in _APPLIED:
        return _APPLIED[wanted]
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        _APPLIED[wanted] = False
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)))
    value = min(mmap_threshold, 2**31 - 1)
    while value >= 1 << 20 and not libc.mallopt(_M_MMAP_THRESHOLD, value):
        value //= 2  # older glibc: at most HEAP_MAX_SIZE / 2
    ok = ok and value == min(mmap_threshold, 2**31 - 1)
    _APPLIED[wanted] = ok
    return ok
