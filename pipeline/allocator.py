"""Keep freed memory for reuse: a CPU forward pass at half the cost on glibc Linux.

Why: glibc's malloc hands every block above its mmap threshold (at most 32 MiB, and
a CNN's activations at 224 px and batch 16 are 10-100 MiB each) to a fresh ``mmap``
and gives it back with ``munmap`` when the tensor is freed. The next batch then
page-faults every 4 KiB of the same sizes in again, and the kernel zeroes each page.
Measured on the 2-core machine (scripts/bench_mine.py): MobileNetV2's bare forward
pass at 224 px spent 114k page faults and 250 ms of system time per batch of 16
(328 ms wall); with freed memory kept for reuse it took 143 ms and no faults. VGG16 and
ResNet-50 gain less (their convolutions dominate).

How: ``mallopt`` raises the mmap threshold to 256 MiB (blocks below it come from the heap
and are reused when freed) and the trim threshold to 2 GiB (freed memory at the top of the
heap is not given back, so the next batch finds it). The price is host memory: freed blocks
stay in the heap and fragment it, so the peak is higher. Measured, VGG16 all 13 conv layers
at 224 px, batch 32, 96 images, `mine run` on 2 CPU cores: 36.0 s and 2.26 GB peak RSS with
glibc as it is, 29.2 s and 2.86 GB tuned. Thresholds of 1 GiB took 27.7 s and 3.61 GB (VGG's
411 MB conv1 maps then come from the heap too); a 256 MiB trim threshold gave back and
faulted in again what MobileNetV2 and ResNet-50 reuse at batch 32 (two thirds of the speed).
A GPU run's activations live on the GPU, so there the host cost is small. This is what PyTorch's CPU
performance guide gets from swapping in jemalloc or tcmalloc, without a preloaded library.
A user's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (any value: a machine
short of memory can set glibc's default trim threshold, ``MALLOC_TRIM_THRESHOLD_=131072``),
or another malloc (``LD_PRELOAD``), is left alone; elsewhere (macOS, musl) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = (1 << 31) - 1  # never give the heap top back (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module docstring says; True when it was done."""
    if not sys.platform.startswith("linux") or "jemalloc" in os.environ.get("LD_PRELOAD", "") \
            or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl's mallopt does nothing
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
