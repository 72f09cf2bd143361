"""How a run works together with its peers: alone (``Solo``) or as one rank of torchrun (``Dist``).

``runner.py`` follows one path for both; every point where one process and a torchrun rank
differ is a method that both classes have (``Dist`` in ``jobs/distributed.py``, which says what
each rank does):

=====================  ==============================  =========================================
step                   one process (``Solo``)          a torchrun rank (``Dist``)
=====================  ==============================  =========================================
same arguments         nothing to compare              every rank's configuration compared
the lock               ``STORE.lock`` held here        rank 0 holds it, its refusal is every rank's
the checkpoint         ``STORE.ckpt``                  ``STORE.ckpt.rankR``
resume from            ``STORE.ckpt`` (or the union    the union of every checkpoint there is
                       of a torchrun job's)
files read             every file                      the files whose name hashes to the rank
progress bar           this process's                  rank 0's, fed by every rank
kept pixels captured   yes (finalize need not re-read) no (finalize re-runs every kept image)
after the pass         nothing to gather               top-k, records, statistics gathered
finalize               every batch                     batches r, r + world, ... (``peers``)
the store              written here                    written by rank 0, the others told
checkpoints removed    here                            by rank 0
=====================  ==============================  =========================================
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from ..devices import resolve_device
from ..lock import StoreLock
from ..mining.peers import Alone
from . import distributed
from .checkpoint import Checkpoint, checkpoint_path, load_checkpoint
from .output import remove_stale_temps
from .update import SkipKnown

log = logging.getLogger("pipeline")


class Solo(Alone):
    """One process mining alone: ``Dist``'s interface, where every collective is the identity
    (``gather_all``, ``agree`` and finalize's ``share``/``gather_to_root`` are ``mining.peers.Alone``'s)."""

    rank, world = 0, 1

    def __init__(self, device: torch.device) -> None:
        self.device = device

    # --- before any work ------------------------------------------------------------------
    def check_same_arguments(self, config: dict, stats) -> None:
        """Nothing to compare with."""

    @contextmanager
    def store_lock(self, store: Path):
        """``STORE.lock`` for the whole run; the temp files of dead writers are removed under it."""
        with StoreLock(store):
            remove_stale_temps(store)
            yield

    # --- checkpoints --------------------------------------------------------------------------
    def checkpoint_path(self, store: Path) -> Path:
        return checkpoint_path(store)

    def load_checkpoints(self, store: Path, discard: bool) -> Checkpoint | None:
        """``STORE.ckpt``, or the union of a torchrun job's checkpoints (resumed by one process);
        ``discard``: deleted instead (--discard-checkpoint)."""
        if distributed.rank_checkpoints(store):
            return distributed.load_all(store, discard)
        path = checkpoint_path(store)
        if not path.exists():
            return None
        if discard:
            log.warning(f"deleting the checkpoint {path} (--discard-checkpoint)")
            path.unlink()
            return None
        return load_checkpoint(path)

    def remove_checkpoints(self, store: Path) -> None:
        """Every checkpoint of ``store``, of any world size."""
        distributed.remove_checkpoints(store)

    # --- streaming ------------------------------------------------------------------------------
    def owns(self, source, index: int) -> bool:
        return True

    def dataset(self, source, prep, todo, known, meter=None) -> SkipKnown:
        return SkipKnown(source, prep, todo, known, meter)

    def progress(self, state, total: int, initial: int, enabled: bool) -> tqdm:
        return tqdm(total=total, initial=initial, unit="img", desc="mining", disable=not enabled, smoothing=0.1)

    def capture(self, make: Callable[[], object]) -> object:
        """What the streaming pass keeps for finalize (``mining.capture``): ``make()``."""
        return make()

    def combine_stream(self, state, stats, source=None, prep=None, net=None, precision: str = "fp32") -> None:
        """The state of this process is the whole state."""

    def serve_kept(self, parts, layers: list[str], k: int, net, source, prep) -> None:
        """Every kept image is read here, by finalize."""

    # --- collectives ----------------------------------------------------------------------------
    def barrier(self) -> None:
        pass

    @property
    def peers(self) -> "Solo":
        """Finalize runs every batch here: this process is its own peers, as a ``Dist`` is."""
        return self


def join(device_name: str) -> Solo | distributed.Dist:
    """This process's part in the run: its rank's ``Dist`` under torchrun (process group opened),
    else ``Solo`` on ``device_name``. ``distributed.leave()`` closes what this opened."""
    dist = distributed.join(device_name)
    return Solo(resolve_device(device_name)) if dist is None else dist
