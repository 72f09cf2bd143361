"""Durable file writes: every whole file here is written through ``write_atomically``.

``write_atomically`` writes a temp file beside the target and renames it over the target (with
``fsync=True`` through ``fsync_rename``, which makes the finished temp file durable, atomically
puts it in place and fsyncs the folder so the rename itself survives a power loss: stores,
checkpoints). ``write_fsync`` writes bytes through a freshly opened descriptor and fsyncs before
closing (lock files, appended run records: files that are created or appended, not replaced).
The replaced file's permission bits carry over to its successor under ``fsync=True``: a store an
operator made 0600 (private) or 0444 (read-only) stays so through ``mine run --update``, ``mine
embed`` and every other rewrite.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from .faults import pause_point


def write_fsync(path: str | os.PathLike, data: bytes, flags: int) -> None:
    """``os.open(path, O_WRONLY | flags)``, write ``data``, fsync, close."""
    fd = os.open(path, os.O_WRONLY | flags, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike, write, suffix: str = "", fsync: bool = False,
                     pause: str = "atomic-write") -> None:
    """``write(tmp)`` to ``.NAME.tmp-PID<suffix>`` beside ``path``, then rename it over ``path``: a reader
    never sees half a file, and a write that fails (a full disk, a signal) leaves no temp file behind.
    The one way every file here is written (stores, checkpoints, embeddings, PNGs, JPEGs, arrays, pages,
    the render manifest).

    ``suffix``: for writers that append one (``np.save`` adds ``.npy`` to any other name).
    ``fsync``: also survive a power loss (:func:`fsync_rename`: the file and the folder are fsynced,
    the replaced file's mode is kept): stores and checkpoints, whose loss costs a run; pictures are
    made again by the next run. ``pause``: the fault-injection point between writing and renaming."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        write(tmp)
        pause_point(pause)  # tests: the temp file written, not yet renamed
        if fsync:
            fsync_rename(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_array(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` to ``path`` (named ``*.npy``), atomically (:func:`write_atomically`)."""
    write_atomically(path, lambda tmp: np.save(tmp, array), suffix=".npy")


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
