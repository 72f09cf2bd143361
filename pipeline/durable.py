"""Durable file writes: the two primitives every crash-safe file here is built from.

``write_fsync`` writes bytes through a freshly opened descriptor and fsyncs before
closing (lock files, appended run records). ``fsync_rename`` makes a finished temp
file durable, atomically puts it in place and fsyncs the folder so the rename
itself survives a power loss (stores, checkpoints).
"""
from __future__ import annotations

import os
from pathlib import Path


def write_fsync(path: str | os.PathLike, data: bytes, flags: int) -> None:
    """``os.open(path, O_WRONLY | flags)``, write ``data``, fsync, close."""
    fd = os.open(path, os.O_WRONLY | flags, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_rename(tmp: Path, target: Path) -> None:
    """Make ``tmp`` durable, then atomically replace ``target`` with it."""
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
