"""Render files written off the critical path: a few threads encode and write a unit's PNGs (and
arrays) while the next unit is projected.

Every file is written atomically (temp file + rename, ``durable.write_atomically``): a reader, or a
render that resumes after a kill, never sees half a file. Writes are grouped by a key (a unit):
:meth:`Writer.finished` says which keys have every file on disk, so the manifest records a unit only
once its files exist. An error in a writer thread is never lost: the next :meth:`finished`,
:meth:`drain` or the end of the ``with`` block raises it (the original exception, naming the file).
At most ``pending`` writes wait at a time (the caller blocks beyond that): memory stays bounded
when encoding is slower than projecting.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..durable import save_array
from ..pictures.montage import save_jpeg, save_png

THREADS = 2  # zlib and libjpeg release the GIL: encoding overlaps the projections' torch threads
PENDING = 32  # writes queued at most (a unit is 4-6 files)


def write_png(img: np.ndarray, path: Path) -> None:
    save_png(img, path)  # atomic (pictures.montage); looked up per call, so a test can make it fail


def write_jpeg(img: np.ndarray, path: Path) -> None:
    save_jpeg(img, path)


def write_npy(a: np.ndarray, path: Path) -> None:
    save_array(path, a)


class WriteError(OSError):
    """A file of the render could not be written (the cause is chained)."""


class Writer:
    """``with Writer() as w: w.submit(key, write_png, img, path); ...; done = w.finished()``."""

    def __init__(self, threads: int = THREADS, pending: int = PENDING) -> None:
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="mine-render-write")
        self.slots = threading.BoundedSemaphore(max(1, pending))
        self.jobs: dict = {}  # key -> futures of its files, in submission order

    def submit(self, key, fn, *args) -> None:
        """Run ``fn(*args)`` on a writer thread (blocks while ``pending`` writes wait)."""
        self.slots.acquire()
        try:
            fut = self.pool.submit(fn, *args)
        except BaseException:
            self.slots.release()
            raise
        fut.add_done_callback(lambda _f: self.slots.release())
        self.jobs.setdefault(key, []).append((fut, args[-1] if args else None))

    def _raise(self, fut: Future, what) -> None:
        err = fut.exception()
        if err is not None:
            raise WriteError(f"could not write {what}: {err}") from err

    def finished(self) -> list:
        """Keys whose files are all written (forgotten from now on), in submission order; raises the
        first error of any write that failed."""
        done = []
        for key, futs in list(self.jobs.items()):
            for fut, what in futs:
                if fut.done():
                    self._raise(fut, what)
            if all(f.done() for f, _ in futs):
                done.append(key)
                del self.jobs[key]
        return done

    def drain(self) -> list:
        """Wait for every write; the keys finished since the last call (raises the first error)."""
        for futs in list(self.jobs.values()):
            for fut, _ in futs:
                fut.exception()  # waits
        return self.finished()

    def close(self, failed: bool = False) -> None:
        """Stop the threads: after an error elsewhere, queued writes are dropped (their units are
        not in the manifest), else every write is waited for and its error raised."""
        try:
            if not failed:
                self.drain()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=failed)

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)
