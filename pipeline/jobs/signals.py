"""SIGINT/SIGTERM handling that ends a run only at a consistent point.

During the streaming pass the first signal only sets a flag: the current batch is
folded, a checkpoint is written, then the run stops with ``Interrupted`` (exit 5).
Raising inside the fold instead could leave the records and the top-k out of
step. A second signal stops at once (the last checkpoint stands).

After the pass (finalize, writing the store) a complete checkpoint already
exists, so a signal raises ``Interrupted`` immediately; the store writer removes
its temp file on the way out and the previous store stays in place.

Handlers are installed only in the main thread (Python allows no other) and the
previous ones are restored on exit, so library users keep their own.
"""
from __future__ import annotations

import signal
import threading

from .errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class InterruptGuard:
    """Context manager; ``requested`` names the first signal received (or is None)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.graceful = True  # False once the streaming pass is over
        self.hint = ""  # appended to the message of an immediate interruption
        self._old: dict = {}

    def _handle(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if self.graceful and self.requested is None:
            self.requested = name
            return
        self.requested = self.requested or name
        raise Interrupted(f"interrupted by {name}" + (f"; {self.hint}" if self.hint else ""))

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
