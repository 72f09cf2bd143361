"""One writer per store: ``STORE.lock`` holding who owns it, with stale-lock takeover.

The same lock guards a render folder (``mine render``: ``OUT/.mine-render.lock``, see
``StoreLock(out, lock_file=...)``), so two renders never write one folder at once.

Why a lock file rather than ``flock``: it works the same on local disks and on
network file systems, an operator can ``cat`` it to see which job holds the store
(pid, host, start time, command), and cron mails can name the holder.

Creation is atomic with its content: the record is written to a private temp file
and hard-linked to ``STORE.lock`` (``link`` fails if the name exists), so no
reader ever sees an empty lock. Where hard links are not supported we fall back
to ``O_CREAT | O_EXCL``.

Staleness: a lock whose pid no longer runs on *this* host is stale (the job was
killed with -9, OOM-killed, or the machine rebooted) and is taken over with a
warning. A reused pid is recognised by the process start time from
``/proc/<pid>/stat`` recorded in the lock. A lock from another host is never
broken automatically (we cannot see its processes): the error says which host
and how to remove it. Taking over re-reads the lock just before removing it, so
two jobs racing to take over the same stale lock cannot remove each other's
fresh one except within that microsecond window.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import uuid
from pathlib import Path

from .durable import write_fsync
from .job_errors import LockedError, WriteError

log = logging.getLogger("pipeline")

GARBLED_GRACE_S = 30.0  # an unreadable lock younger than this may still be being written


def lock_path(store: Path) -> Path:
    return store.with_name(store.name + ".lock")


def _proc_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int, proc_start: int | None = None) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if proc_start is not None:
        now = _proc_start(pid)
        if now is not None and now != proc_start:
            return False  # the pid was reused by another process
    return True


class StoreLock:
    """``with StoreLock(store):`` -- raises ``LockedError`` if a live job holds it.

    ``lock_file``: where the lock lives when it is not ``STORE.lock`` (a folder's lock inside
    it); ``store`` is then only the name the messages give to what is locked.
    """

    def __init__(self, store: str | os.PathLike, command: str = "", lock_file: str | os.PathLike | None = None) -> None:
        self.store = Path(store)
        self.path = Path(lock_file) if lock_file is not None else lock_path(self.store)
        self.token = uuid.uuid4().hex
        self.command = command or " ".join(sys.argv)[:300]
        self.held = False
        self.took_over: dict | None = None

    def _content(self) -> bytes:
        return json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "proc_start": _proc_start(os.getpid()),
            "token": self.token, "command": self.command,
        }).encode()

    def _create(self) -> bool:
        """True if we created the lock, False if it exists."""
        data = self._content()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{self.token[:8]}")
        try:
            write_fsync(tmp, data, os.O_CREAT | os.O_EXCL)
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            except OSError:  # no hard links here (some FUSE/SMB mounts)
                try:
                    write_fsync(self.path, data, os.O_CREAT | os.O_EXCL)
                except FileExistsError:
                    return False
                return True
        finally:
            try:
                tmp.unlink()
            except OSError:
                pass

    def _read(self) -> tuple[bytes | None, dict | None]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None, None
        try:
            info = json.loads(raw)
            return raw, info if isinstance(info, dict) and "pid" in info else None
        except ValueError:
            return raw, None

    def acquire(self) -> "StoreLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"cannot create the output folder {self.path.parent}: {e.strerror or e}") from None
        host = socket.gethostname()
        for _ in range(5):
            try:
                if self._create():
                    self.held = True
                    return self
            except OSError as e:
                raise WriteError(f"cannot write in the output folder {self.path.parent}: {e.strerror or e}") from None
            raw, info = self._read()
            if raw is None:
                continue  # released meanwhile; try again
            if info is None:
                age = time.time() - self.path.stat().st_mtime
                if age < GARBLED_GRACE_S:
                    raise LockedError(f"{self.path} exists but is unreadable (being written?); "
                                      f"if no other job runs, delete it and re-run")
                reason = "an unreadable lock file"
            elif info.get("host") != host:
                raise LockedError(
                    f"{self.store} is locked by pid {info['pid']} on host {info.get('host')} since "
                    f"{info.get('started')}; if that job is gone, delete {self.path} and re-run")
            elif pid_alive(int(info["pid"]), info.get("proc_start")):
                raise LockedError(
                    f"{self.store} is locked by another mine job: pid {info['pid']} (started "
                    f"{info.get('started')}); wait for it to finish, or stop it, then re-run")
            else:
                reason = f"dead pid {info['pid']} (started {info.get('started')})"
            if self.path.exists() and self._read()[0] == raw:  # still the same stale lock
                log.warning("taking over the stale lock %s of %s", self.path, reason)
                self.took_over = info or {}
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
        raise LockedError(f"could not acquire {self.path}: other jobs keep taking it")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        _, info = self._read()
        if info is not None and info.get("token") == self.token:  # never remove someone else's lock
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
