"""Job failures that a scheduler must tell apart (the CLI maps each to an exit code).

They carry one-line messages meant for an operator reading a cron mail: what
happened, and what to run next.
"""
from __future__ import annotations


class JobError(Exception):
    """Base of the job failures below."""


class LockedError(JobError):
    """Another live job holds the store's lock (exit code LOCKED)."""


class StoreExistsError(JobError):
    """The output store is already complete and neither --update nor --force was given."""


class IncompatibleError(JobError):
    """Stores or a store and a run differ in model, weights, preprocessing, k, layers or precision."""


class CheckpointError(JobError):
    """A checkpoint is unreadable (exit code STORE_ERROR)."""


class CheckpointMismatch(JobError):
    """A checkpoint was written by a run with another configuration (exit code BAD_ARGS)."""


class SourceChanged(JobError):
    """Kept image files kept changing while they were mined (exit code MISSING_INPUT)."""


class WriteError(JobError):
    """The output folder is unwritable or the disk is full; earlier files are left as they were."""


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM ended the run.

    A ``KeyboardInterrupt`` on purpose: it may be raised from a signal handler in
    the middle of any code, and must not be swallowed by ``except Exception``
    clauses (the image decoder has one, to turn decoder bugs into skipped files).
    """
