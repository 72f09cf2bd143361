"""Deterministic pause points for fault-injection tests (inert unless the variable is set).

A test that must kill a run *during the checkpoint write* cannot hit that moment
with sleeps. Instead it sets::

    MINE_TEST_PAUSE_AT=checkpoint-write:2     # the 2nd time that point is reached
    MINE_TEST_PAUSE_FILE=/tmp/x/ready         # created (holding the pid) when paused
    MINE_TEST_PAUSE_RANK=1                    # torchrun jobs: only that rank pauses (default 0)

The process then blocks at that point until it is killed, or until ``until()``
says to go on (e.g. a SIGINT was received). Points used by ``mine run``:

    stream            after a batch is folded into the top-k, before any checkpoint
    checkpoint-write  checkpoint data written to the temp file, not yet renamed
    finalize          finalize is loading the n-th kept image
    store-written     the store is in place, the checkpoint not yet removed

and by ``mine embed``:

    embed             the store's lock is held and the store open, nothing read yet

and by every command:

    command           the command is about to start (the process's signal handler is in place)
    atomic-write      a file written through ``durable.write_atomically`` (stores, embeddings, PNGs,
                      JPEGs, pages, arrays, the render manifest) is in its temp file, not yet renamed
                      (checkpoints name their own point, ``checkpoint-write``)
    exit              the command has ended (locks released), the process not yet gone
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

PAUSE_ENV = "MINE_TEST_PAUSE_AT"
READY_ENV = "MINE_TEST_PAUSE_FILE"
RANK_ENV = "MINE_TEST_PAUSE_RANK"
_hits: dict[str, int] = {}


def pause_point(name: str, until: Callable[[], bool] | None = None) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name or os.environ.get("RANK", "0") != os.environ.get(RANK_ENV, "0"):
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != int(nth or 1):
        return
    ready = os.environ.get(READY_ENV)
    if ready:
        tmp = Path(ready + ".tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, ready)  # the test never sees a half-written file
    while not (until is not None and until()):
        time.sleep(0.01)
