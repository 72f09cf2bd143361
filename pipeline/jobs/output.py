"""The output folder: leftovers of crashed writers, write failures explained, and a
store writer that cannot take the job down with it.

Stores and checkpoints are written to ``.NAME.tmp-PID`` / ``.NAME.ckpt.tmp-PID``
and renamed into place, so a crash leaves at worst such a temp file next to an
intact previous version. Whoever holds the store's lock removes the temps of dead
processes: repeated crashes cannot fill the disk with them.

Write failures surface in different shapes (``OSError`` from Python, a
``RuntimeError`` from HDF5 carrying "errno = 28" in its text); ``write_error``
turns any of them into one ``WriteError`` line that says what is still valid.

Why the store is written in a forked child (``write_isolated``): when a write
fails (disk full, file size limit), HDF5 2.0 crashes the whole process with a
segmentation fault while closing the file. In a child that crash costs only the
child: the parent removes the half-written temp file, explains the failure in one
line (with the free space it sees), writes the run record and exits with
STORE_ERROR, while the previous store and the checkpoint stay valid. The child
shares the parent's memory copy-on-write, so nothing is copied or pickled; it
touches no GPU. Where ``fork`` does not exist the write runs in-process.
"""
from __future__ import annotations

import errno
import faulthandler
import json
import logging
import os
import re
import resource
import shutil
import signal
import traceback
from pathlib import Path
from typing import Callable

from ..job_errors import WriteError
from ..lock import pid_alive

log = logging.getLogger("pipeline")

_ERRNO_IN_TEXT = re.compile(r"errno\s*=\s*(\d+)")


def store_target(path: Path) -> Path:
    """The file a store path names: a symlink (``latest.h5 -> 2026-11-25.h5``) is followed, so
    the store is written over its target (the link stays a link) and locked under the target's
    name, which every other name of the same store shares."""
    path = Path(path)
    return path.resolve() if path.is_symlink() else path


def remove_stale_temps(store: Path) -> list[Path]:
    """Delete temp files of dead writers of ``store`` (store, checkpoint, lock record);
    returns what was removed."""
    removed = []
    for pattern, pid_at in ((f".{store.name}.tmp-*", r"-(\d+)$"), (f".{store.name}.ckpt.tmp-*", r"-(\d+)$"),
                            (f".{store.name}.lock.*", r"\.lock\.(\d+)\.")):
        for p in store.parent.glob(pattern):
            m = re.search(pid_at, p.name)
            if not m:
                continue
            pid = int(m.group(1))
            if pid == os.getpid() or not pid_alive(pid):
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
    if removed:
        log.warning("removed %d temp file(s) left by an interrupted writer of %s", len(removed), store.name)
    return removed


def error_code_of(e: BaseException) -> int | None:
    if isinstance(e, OSError) and e.errno:
        return e.errno
    m = _ERRNO_IN_TEXT.search(str(e))
    return int(m.group(1)) if m else None


def write_error(what: Path, e: BaseException, kept: str) -> WriteError:
    """``kept`` says what is still valid, e.g. "the previous store and checkpoint are unchanged"."""
    code = error_code_of(e)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EFBIG: "file too large for this file system or limit"}[code]
        fix = "free some space and re-run the same command"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        why, fix = os.strerror(code).lower(), "make the folder writable and re-run the same command"
    elif code is not None:
        why, fix = os.strerror(code).lower(), "fix the cause and re-run the same command"
    else:
        why, fix = str(e).splitlines()[0] if str(e) else type(e).__name__, "re-run the same command"
    return WriteError(f"cannot write {what}: {why}; {kept}; {fix}")


def _space_note(folder: Path) -> str:
    notes = []
    try:
        notes.append(f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free in {folder}")
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        notes.append(f"file size limit (ulimit -f) {soft} bytes")
    return ", ".join(notes)


def write_isolated(path: Path, writer: Callable[[], object], kept: str) -> None:
    """Run ``writer()`` -- which writes ``path`` atomically through ``.NAME.tmp-PID`` -- in a
    forked child; any failure or crash of it becomes one ``WriteError`` here."""
    path = Path(path)
    if not hasattr(os, "fork"):
        try:
            writer()
        except (OSError, RuntimeError) as e:
            raise write_error(path, e, kept) from None
        return
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _write_in_child(writer, r, w)
    os.close(w)
    status, report = _wait_for_writer(path, pid, r)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return
    path.with_name(f".{path.name}.tmp-{pid}").unlink(missing_ok=True)
    raise _writer_failure(path, status, report, kept)


def _write_in_child(writer: Callable[[], object], r: int, w: int) -> None:
    """The child: write, report a failure through the pipe ``w``, never return into the parent's code."""
    code = 1
    try:
        os.close(r)
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_DFL)
        faulthandler.disable()  # a crash is reported by the parent, in one line
        null = os.open(os.devnull, os.O_WRONLY)  # HDF5's dealloc noise after a failure
        os.dup2(null, 1)
        os.dup2(null, 2)
        writer()
        code = 0
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        info = {"errno": error_code_of(e), "message": str(e)[:2000], "type": type(e).__name__,
                "io": isinstance(e, (OSError, RuntimeError)), "traceback": traceback.format_exc()[-6000:]}
        try:
            os.write(w, json.dumps(info).encode())
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def _wait_for_writer(path: Path, pid: int, r: int) -> tuple[int, bytes]:
    """The child's exit status and what it reported; interrupted while waiting: stop the writer,
    drop its temp file, re-raise."""
    chunks = []
    try:
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
    except BaseException:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        path.with_name(f".{path.name}.tmp-{pid}").unlink(missing_ok=True)
        raise
    finally:
        os.close(r)
    return status, b"".join(chunks)


def _writer_failure(path: Path, status: int, report: bytes, kept: str) -> Exception:
    """The one-line error for a writer that failed (``report``) or died without a word."""
    info = json.loads(report or b"null")
    if info is None:
        how = (f"signal {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
               else f"exit code {os.WEXITSTATUS(status)}")
        note = _space_note(path.parent)
        return WriteError(f"cannot write {path}: the HDF5 writer died ({how}), as it does when a write fails "
                          f"(disk full? file size limit?){'; ' + note if note else ''}; {kept}; free some space "
                          f"and re-run the same command")
    if not info["io"]:  # a bug, not the disk: show where
        return RuntimeError(f"writing {path} failed:\n{info['traceback']}")
    e = OSError(info["errno"], info["message"]) if info["errno"] else RuntimeError(info["message"])
    return write_error(path, e, kept)
