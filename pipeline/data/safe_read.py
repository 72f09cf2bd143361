"""Read the bytes of one image file, refusing anything that could hang or exhaust a worker.

Why a module of its own: a collection is data we do not control, and a plain ``open().read()``
trusts it twice. ``open()`` on a FIFO blocks until some writer appears (forever, in a nightly
job, with the store's lock held), and reading a symlink to ``/dev/zero`` or a 50 GB file goes on
until memory runs out. So:

* only **regular files** are read, judged after following symlinks; directories, FIFOs,
  devices and sockets are refused without being opened;
* the file is opened with ``O_NONBLOCK`` and checked again with ``fstat``: a file swapped for
  a FIFO between the check and the open still cannot block (``O_NONBLOCK`` does nothing to
  regular files);
* at most :data:`MAX_FILE_BYTES` are read: a file that is larger, or grows past the limit
  while being read, is refused.

Every refusal is an :class:`Unreadable` whose text is the short reason the images table
records ("unreadable: not a regular file (fifo)", "too large: ...").
"""

from __future__ import annotations

import os
import stat

__all__ = ["MAX_FILE_BYTES", "Unreadable", "read_file"]

#: Largest image file read, in bytes (256 MiB): several times a 100-megapixel JPEG or PNG, and
#: a bound on what one decoding worker holds before decoding starts.
MAX_FILE_BYTES = 256 * 2**20

_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


class Unreadable(Exception):
    """A file that was not read; ``str(exc)`` is the reason recorded for it."""


def _refuse_irregular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "special file")
        raise Unreadable(f"unreadable: not a regular file ({kind})")


def read_file(path: str | os.PathLike, limit: int = MAX_FILE_BYTES) -> bytes:
    """The whole content of the regular file ``path`` (at most ``limit`` bytes), or
    :class:`Unreadable` saying why not (see module docstring)."""
    try:
        st = os.stat(path)
        _refuse_irregular(st.st_mode)
        if st.st_size > limit:
            raise Unreadable(f"too large: {st.st_size} bytes (limit {limit})")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise Unreadable(f"unreadable: {exc.strerror or type(exc).__name__}") from None
    with os.fdopen(fd, "rb") as f:
        try:
            _refuse_irregular(os.fstat(fd).st_mode)
            data = f.read(limit + 1)
        except OSError as exc:
            raise Unreadable(f"unreadable: {exc.strerror or type(exc).__name__}") from None
    if len(data) > limit:
        raise Unreadable(f"too large: more than {limit} bytes (grew while being read)")
    return data
