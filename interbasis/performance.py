"""Process-level tuning for large tensor workloads (opt-in; the CLI and benchmarks use it).

The Jacobian passes allocate and free tensors of tens to hundreds of MiB per chunk. glibc's
malloc serves such blocks with ``mmap`` and returns them to the kernel on ``free``, so every
chunk pays page faults again: on the 2-core CI machine that is about a third of the CPU time
of the mod-add build (system time). :func:`tune_allocator` raises glibc's mmap and trim
thresholds through ``mallopt`` so freed blocks are reused instead. The change is
process-wide (memory freed later is kept by the process), which is why the library never
does it on its own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_allocator(
    mmap_threshold: int = 2**30, trim_threshold: int = 2**31 - 1, top_pad: int = 2**28
) -> bool:
    """Set glibc ``mallopt`` thresholds (bytes); returns False where glibc is not available."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    ok &= mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    ok &= mallopt(_M_TOP_PAD, top_pad)
    return bool(ok)
