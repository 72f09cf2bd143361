"""The run record: one JSON line per job appended to a log file, for cron wrappers.

Why a log of JSON lines: a wrapper (or a monitoring agent) can ``tail -n1`` it and
alert on ``status != "ok"`` without parsing human output, and the history shows
throughput trends night after night. The line is written with one ``write`` on a
file opened with O_APPEND and then fsynced, so concurrent jobs sharing a log never
interleave and a crash right after the job cannot lose its line.

Where: ``--log PATH``, else ``mine-runs.jsonl`` in the store's folder. A run given
neither ``--out`` nor ``--update`` that fails before it has chosen its default
store path (images or weights not found) writes no record; pass ``--log`` to
always get one.

Fields (all always present; ``null`` where unknown)::

    start, end          ISO 8601 UTC with seconds
    command             "run" or "merge"
    status              ok | bad-args | missing-input | locked | interrupted |
                        store-error | failed | crashed
    exit_code           the process exit code (see pipeline.exitcodes)
    error               the one-line error message, or null
    mode                fresh | resume | update | update-resume | merge | already-complete
    store               the output store path
    images_seen         files in the image list of this run, once it streams them (null for a run
                        refused before, e.g. an existing store; merge: rows of the union)
    images_skipped      unreadable / corrupt files among them
    images_new          images decoded and mined by this invocation
    images_known        images skipped because the store already held their content (--update)
    images_resumed      images restored from a checkpoint instead of being mined again
    bytes_read          bytes of image files read by the streaming pass of this invocation (all
                        ranks; each rank's own in ``ranks``): --update reads only new or changed
                        files, a torchrun rank only its share
    seconds, images_per_s   wall time of this invocation; images_new / seconds
    world_size, ranks   processes of a torchrun job and, per rank, its rank, host, pid, device,
                        images_new, bytes_read, seconds (its streaming pass) and images_per_s; ranks is null
                        for a single process
    version, host, pid
"""
from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import exitcodes
from ..durable import write_fsync
from ..versions import __version__

logger = logging.getLogger("pipeline")

LOG_NAME = "mine-runs.jsonl"

STATUS = {
    exitcodes.OK: "ok",
    exitcodes.BAD_ARGS: "bad-args",
    exitcodes.MISSING_INPUT: "missing-input",
    exitcodes.LOCKED: "locked",
    exitcodes.INTERRUPTED: "interrupted",
    exitcodes.STORE_ERROR: "store-error",
    exitcodes.FAILED: "failed",
}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class JobStats:
    """Filled in by the job as it goes, so a failed job still reports how far it got."""

    command: str = "run"
    mode: str | None = None
    store: str | None = None
    images_seen: int | None = None
    images_skipped: int | None = None
    images_new: int = 0
    images_known: int = 0
    images_resumed: int = 0
    bytes_read: int | None = None  # image bytes the streaming pass read (all ranks)
    ranks: list[dict] | None = None  # torchrun jobs: one entry per process (see jobs.distributed)
    start: str = field(default_factory=now_iso)


def default_log(store: str | os.PathLike) -> Path:
    """``mine-runs.jsonl`` in the store's folder."""
    return Path(store).parent / LOG_NAME


def make_record(stats: JobStats, exit_code: int, error: str | None, seconds: float) -> dict:
    return {
        "start": stats.start,
        "end": now_iso(),
        "command": stats.command,
        "status": STATUS.get(exit_code, "crashed"),
        "exit_code": exit_code,
        "error": error,
        "mode": stats.mode,
        "store": stats.store,
        "images_seen": stats.images_seen,
        "images_skipped": stats.images_skipped,
        "images_new": stats.images_new,
        "images_known": stats.images_known,
        "images_resumed": stats.images_resumed,
        "bytes_read": stats.bytes_read,
        "seconds": round(seconds, 3),
        "images_per_s": round(stats.images_new / seconds, 3) if seconds > 0 else None,
        "world_size": len(stats.ranks) if stats.ranks else 1,
        "ranks": stats.ranks,
        "version": __version__,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def append_record(log: str | os.PathLike, record: dict) -> bool:
    """Append one line durably; on failure warn on stderr and return False (never raise:
    losing the log line must not change the job's exit code)."""
    line = (json.dumps(record) + "\n").encode()
    try:
        write_fsync(log, line, os.O_APPEND | os.O_CREAT)
        return True
    except OSError as e:
        logger.warning("could not append the run record to %s: %s", log, e.strerror or e)
        return False
