"""Who else re-runs finalize's batches: nobody (``ALONE``) or the ranks of a torchrun job.

Finalize asks its peers four things: which batches are mine, everyone's list (of changed files),
everything on rank 0 (the re-run results), and whether anyone failed. ``Alone`` answers them for one
process, ``jobs.distributed.Dist`` for a rank, so finalize has one code path and no "am I
distributed" branch (the same idea as ``jobs.strategy.Solo``, one layer lower).
"""
from __future__ import annotations


class Alone:
    """The peers of a process that runs alone: every batch is its own, every gather is itself."""

    def share(self, n_batches: int) -> list[int]:
        return list(range(n_batches))

    def gather_all(self, obj) -> list:
        return [obj]

    def gather_to_root(self, obj) -> list:
        return [obj]

    def agree(self, error: BaseException | None) -> None:
        if error is not None:
            raise error


ALONE = Alone()
