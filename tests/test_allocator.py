"""pipeline/allocator.py: large freed blocks stay in the heap for reuse instead of being unmapped.

Reference: glibc's own accounting (``mallinfo2``): bytes in mmapped blocks while a 64 MiB
tensor lives, and bytes the heap keeps once it is freed, in a fresh process with and without
the tuning (the setting is process-wide, so each case runs in its own interpreter).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

MIB = 64  # above glibc's largest automatic mmap threshold (32 MiB), below ours (256 MiB)

CHILD = f"""
import ctypes, json, sys
import torch
from pipeline.allocator import keep_freed_memory

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
tuned = keep_freed_memory() if sys.argv[1] == "tune" else False
before = libc.mallinfo2()
t = torch.ones({MIB} * 2**20, dtype=torch.uint8)
live = libc.mallinfo2()
del t
freed = libc.mallinfo2()
print(json.dumps({{"tuned": tuned, "mmapped": live.hblkhd - before.hblkhd, "kept": freed.arena - before.arena}}))
"""


def child(mode: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is Linux-only")
def test_a_freed_block_stays_in_the_heap_for_the_next_batch():
    size = MIB * 2**20
    plain = child("plain")
    assert plain["mmapped"] >= size and plain["kept"] < size  # glibc as it is: its own mmap, unmapped when freed
    tuned = child("tune")
    # from the heap, and kept there (the heap grew by the block, less what it had free before)
    assert tuned["tuned"] and tuned["mmapped"] == 0 and tuned["kept"] >= 0.95 * size


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is Linux-only")
def test_a_users_malloc_settings_are_left_alone():
    got = child("tune", MALLOC_MMAP_THRESHOLD_="131072")
    assert not got["tuned"] and got["mmapped"] >= MIB * 2**20
