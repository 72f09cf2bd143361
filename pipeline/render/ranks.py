"""`mine render` over several processes: ``torchrun --nproc-per-node N -m pipeline render STORE``.

Each layer's units to render are cut into the chunks one process would render (``per_chunk`` units,
one projection batch each); chunk i belongs to rank ``i % world``, and the chunks are taken in
rounds of ``world`` so that every rank runs the same number of rounds. A rank projects its chunks on
its own device (``cuda:LOCAL_RANK``, or the CPU with gloo) and writes its units' files itself;
after each round the ranks send the manifest records of the units whose files are on disk to rank 0,
which saves the manifest. Shared files -- the manifest, the layer-level images (they read the
overview units' montages, so they wait for a barrier), the viewer pages -- are written by rank 0
only; the kept images (``images/{kept}.jpg``) by rank ``kept % world``. The files do not depend on
the split (see ``project``: a batch of two or more entries gives every entry the same bits whatever
its neighbours), so the folder is byte-identical to one process's.

One process (no torchrun) is ``One``: rank 0 of 1, every collective a no-op. The CLI opens the
process group (``jobs.distributed.join``) and hands ``render_store`` its ``Ranks``: render/ does not
depend on the job machinery.
"""
from __future__ import annotations

from types import SimpleNamespace

from ..devices import resolve_device


class One:
    """The one process of a render without torchrun."""

    rank, world = 0, 1

    def __init__(self, device: str) -> None:
        self.device = resolve_device(device)

    @property
    def root(self) -> bool:
        return self.rank == 0

    def mine(self, chunk: int) -> bool:
        """Whether chunk ``chunk`` of a layer's units is this rank's."""
        return chunk % self.world == self.rank

    def gather(self, obj) -> list | None:
        """``obj`` of every rank on rank 0 (a list by rank), None elsewhere."""
        return [obj]

    def from_root(self, obj):
        """Rank 0's ``obj`` on every rank (what rank 0 decided, every rank follows)."""
        return obj

    def agree(self, error: BaseException | None) -> None:
        if error is not None:
            raise error

    def barrier(self) -> None:
        pass

    def same_arguments(self, config: dict) -> None:
        pass


class Ranks(One):
    """A rank of a torchrun job (``jobs.distributed.Dist``: a lost peer is one clear error)."""

    def __init__(self, dist) -> None:
        self.dist = dist
        self.rank, self.world, self.device = dist.rank, dist.world, dist.device

    def gather(self, obj) -> list | None:
        return self.dist.gather_to_root(obj)

    def from_root(self, obj):
        return self.dist.gather_all(obj)[0]

    def agree(self, error: BaseException | None) -> None:
        self.dist.agree(error)

    def barrier(self) -> None:
        self.dist.barrier()

    def same_arguments(self, config: dict) -> None:
        self.dist.check_same_arguments(config, SimpleNamespace(ranks=[]))
