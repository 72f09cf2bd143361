"""Durable file writes: the two primitives every crash-safe file here is built from.

``write_fsync`` writes bytes through a freshly opened descriptor and fsyncs before
closing (lock files, appended run records). ``fsync_rename`` makes a finished temp
file durable, atomically puts it in place and fsyncs the folder so the rename
itself survives a power loss (stores, checkpoints). The replaced file's permission bits
carry over to its successor: a store an operator made 0600 (private) or 0444 (read-only) stays
so through ``mine run --update``, ``mine embed`` and every other rewrite.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .faults import pause_point


def write_fsync(path: str | os.PathLike, data: bytes, flags: int) -> None:
    """``os.open(path, O_WRONLY | flags)``, write ``data``, fsync, close."""
    fd = os.open(path, os.O_WRONLY | flags, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike, write, suffix: str = "") -> None:
    """``write(tmp)`` to ``.NAME.tmp-PID<suffix>`` beside ``path``, then rename it over ``path``: a reader
    never sees half a file, and a write that fails (a full disk, a signal) leaves no temp file behind.
    ``suffix``: for writers that append one (``np.save`` adds ``.npy`` to any other name)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        write(tmp)
        pause_point("atomic-write")  # tests: the temp file written, not yet renamed
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_rename(tmp: Path, target: Path) -> None:
    """Make ``tmp`` durable, then atomically replace ``target`` with it (keeping ``target``'s mode)."""
    try:
        os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
    except FileNotFoundError:
        pass  # a new file: the umask decides, as for any file we create
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)
    dfd = os.open(Path(target).parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
