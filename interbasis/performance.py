"""Thread and allocator tuning.

:func:`single_thread` runs small tensor work on one thread (the library uses it around small
eigendecompositions and small-model Jacobian passes).

:func:`tune_allocator` is process-level tuning for large tensor workloads (opt-in; the CLI and
benchmarks use it).

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
from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: below this many floating-point elements per pass, torch ops run on one thread
SMALL_WORK = 2**21

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


@contextmanager
def single_thread(active: bool = True) -> Iterator[None]:
    """Run torch (intra-op) on one thread inside the block when ``active``.

    For small tensors a second thread only adds OpenMP synchronisation: on a busy 2-core
    machine a 128 x 128 ``eigh`` ran 300x slower, and the VJPs of a small sequence model 20x.
    The previous thread count is restored on exit.
    """
    if not active or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
