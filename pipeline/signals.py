"""SIGINT/SIGTERM handling that ends a run promptly, at a consistent point when it can.

While ``graceful`` is on (the streaming pass) the first signal only sets a flag:
the current batch is folded, a checkpoint is written, then the run stops with
``Interrupted`` (exit 5). Raising inside the fold instead could leave the records
and the top-k out of step. But the batch must not be waited for forever: a read
that never returns (a hung network mount) or a slow batch would keep the job, and
its lock, alive. So the first signal also arms a timer: if the run has not stopped
``GRACE_S`` seconds later, the signal is delivered again to the main thread (a
blocking system call there returns), which stops at once; the stream loop keeps
its state consistent between batches, so the run still saves a checkpoint of the
batches folded so far. A second signal from outside stops at once as well.

Outside the streaming pass (``graceful`` off: setting up, finalize, writing the
store) a signal raises ``Interrupted`` immediately; the store writer removes its
temp file on the way out and the previous store stays in place.

The handler itself only sets a flag or raises: it never touches HDF5, a checkpoint or any
file (the checkpoint is written by the stream loop after the handler returned, with numpy, and
stores only by a forked writer), so a signal that lands while the main thread is inside HDF5
cannot re-enter the library (issue 23, item 14).

Handlers are installed only in the main thread (Python allows no other) and the
previous ones are restored on exit, so library users keep their own.

The ``mine`` program itself (``cli.main``) installs one more handler for the whole process,
``ProcessSignals``, and never restores the default: a guard restores it on exit, so a signal
that lands before, between or after the guards (a command without one, a lock just released,
the process shutting down) still ends the command with exit 5 instead of killing it (143).
"""
from __future__ import annotations

import signal
import threading

from .job_errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 3.0  # longest wait for the current batch after the first signal


class ProcessSignals:
    """The ``mine`` process's own SIGINT/SIGTERM handler (``install`` once, ``settle`` at exit).

    While the command works, the first signal raises ``Interrupted`` (exit 5; locks and temp
    files are released by the ``with`` blocks it unwinds). ``settle`` is called when the command
    has ended: from then on a signal is only recorded, and the process ignores further ones,
    so nothing can kill it with 143 while it shuts down.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self.finished = False

    def install(self) -> "ProcessSignals":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                signal.signal(s, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        first = self.received is None
        self.received = self.received or signal.Signals(signum).name
        if first and not self.finished:
            raise Interrupted(f"interrupted by {self.received}")

    def settle(self) -> str | None:
        """Stop raising, ignore signals from now on; the signal received (if any), for the exit code.

        ``signal.signal`` runs pending Python handlers before it changes one (CPython), so a
        signal delivered just before is recorded, not lost."""
        self.finished = True
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                signal.signal(s, signal.SIG_IGN)
        return self.received


class InterruptGuard:
    """Context manager; ``requested`` names the first signal received (or is None)."""

    def __init__(self, graceful: bool = True, grace_s: float = GRACE_S) -> None:
        self.requested: str | None = None
        self.hint = ""  # appended to the message of an immediate interruption
        self.grace_s = grace_s
        self._graceful = graceful
        self._old: dict = {}
        self._timer: threading.Timer | None = None
        self._timer_lock = threading.Lock()

    @property
    def graceful(self) -> bool:
        return self._graceful

    @graceful.setter
    def graceful(self, on: bool) -> None:
        self._graceful = on
        if not on:
            self._disarm()

    def _handle(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if self._graceful and self.requested is None:
            self.requested = name
            self._arm(signum)
            return
        self.requested = self.requested or name
        self._disarm()
        raise Interrupted(f"interrupted by {name}" + (f"; {self.hint}" if self.hint else ""))

    def _arm(self, signum: int) -> None:
        main = threading.main_thread().ident

        def expire() -> None:
            with self._timer_lock:
                if self._timer is not None:  # not disarmed meanwhile
                    self._timer = None
                    signal.pthread_kill(main, signum)

        with self._timer_lock:
            self._timer = threading.Timer(self.grace_s, expire)
            self._timer.daemon = True
            self._timer.start()

    def _disarm(self) -> None:
        with self._timer_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._disarm()
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
