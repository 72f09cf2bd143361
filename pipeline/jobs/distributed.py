"""`mine run` over several processes (one per GPU) under torch.distributed -> one store.

Launched by ``torchrun`` (``torchrun --nproc-per-node 8 -m pipeline run ...``, or with
``--nnodes`` and a rendezvous endpoint across machines). ``join()`` reads the torchrun
environment (RANK, WORLD_SIZE, LOCAL_RANK), opens the process group (gloo for CPU runs;
NCCL for CUDA tensors plus gloo for host objects on GPU runs) and returns the rank's
``Dist``; outside torchrun (or with one process) it returns None and ``jobs.strategy.join``
runs the job as ``Solo``.

Who does what (``Dist``'s methods are the steps of ``runner.py`` where a rank differs from
one process; ``jobs.strategy.Solo`` has the same methods for one process):

* **Share by name.** Rank r reads, hashes, decodes and mines only the files whose name
  (the path relative to the images root, or an array item's ``<file>#<i>``) hashes to r:
  ``sha256(name)[:8] % world == r`` (:func:`owner`). No file contents are needed to split,
  so each file is read once per job (the collection's bytes, not ``world`` times that),
  whatever the number of ranks, and the split does not depend on the order of the list.
  ``--update`` is unchanged: each rank skips its unchanged files by their metadata and
  its known contents by their key. Files the rank does not own are not in its loader.
* **Duplicates across ranks.** Identical copies under two names may fall to two ranks; both
  mine the content. The result is still the single process's: the top-k merge keeps a key
  once, pooled vectors are united by key, and "ok"/"duplicate" is decided by path order
  when the images table is built. The unit statistics would count the content twice, so
  after the pass every extra copy (all but the first path of a content fed more than once)
  is run again by the rank that owns its file and subtracted from that rank's statistics
  (``UnitStats.merge(sign=-1)``, exact by batch invariance, as ``mine merge`` does); its
  record becomes "duplicate" and ``images_new`` counts the content once.
* **Kept images are read by their owner.** Finalize's fixed batches need the pixels of kept
  images owned by other ranks: each rank reads its own kept files and sends the records to
  the rank whose finalize batch holds them (:meth:`Dist.serve_kept`), so no rank opens a
  file of another's share.
* **No collective while streaming.** Ranks stream independently (a dead rank cannot hang
  the others mid-pass); progress goes through the rendezvous key-value store, so rank 0's
  bar shows the global count and rate.
* **Exact combination.** After the pass, every rank all-gathers the ``state()`` of every
  statistic of each layer (top-k, pooled vectors) and merges them (``mining.statistic``:
  exact, associative, a key seen twice kept once; :meth:`Dist.merge_statistics`), all-gathers
  the image records and the unit statistics (integer counts: contributions by process,
  united by id, see ``StreamState``). Every rank then holds the state one process would
  have had.
* **Finalize split.** Finalize runs the kept images in fixed batches (key order); rank r
  re-runs batches r, r + world, ... (whole batches, so every float32 value and switch is
  computed exactly as in one process) and sends its results to rank 0, which checks them
  and writes the one store. The store equals the single-process store.
* **Nightly guarantees.** Rank 0 holds ``STORE.lock`` (a refusal reaches every rank);
  each rank checkpoints to ``STORE.ckpt.rankR``; on start every rank reads every
  checkpoint file there is (any world size, also a single-process ``STORE.ckpt``) and
  merges them (top-k exactly, records by image, statistics by contribution), so a job killed anywhere resumes with the
  same or another number of processes. Rank 0 removes them all once the store is written.
  One run record is written, by rank 0, with every rank's throughput.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist

from ..devices import resolve_device
from ..job_errors import CheckpointError, Interrupted
from ..lock import StoreLock
from ..mining.pooled import PooledVectors
from ..mining.records import Records
from ..mining.statistic import merge_layer_states, merge_states
from ..mining.stream import StreamState, fed_keys, unite_contributions
from ..mining.topk import RunningTopK
from .checkpoint import Checkpoint, checkpoint_path, differences, load_checkpoint
from .combine import union_tops
from .output import remove_stale_temps
from .update import SkipKnown

log = logging.getLogger("pipeline")

OTHER = "other-rank"  # record reason: another rank owns this image
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class PeerLost(Interrupted):
    """Another rank stopped (killed, failed): this rank's progress is in its checkpoint."""


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def is_secondary() -> bool:
    """True on ranks other than 0 of a torchrun job (they write no run record, print nothing)."""
    return under_torchrun() and int(os.environ["RANK"]) != 0


def rank_checkpoint(store: Path, rank: int) -> Path:
    return store.with_name(f"{store.name}.ckpt.rank{rank}")


def checkpoint_files(store: Path) -> list[Path]:
    """Every checkpoint of ``store`` there is: per-rank files of any world size, and the
    single-process ``STORE.ckpt``."""
    files = sorted(store.parent.glob(f"{store.name}.ckpt.rank*"), key=lambda p: p.name)
    files = [p for p in files if p.name[len(f"{store.name}.ckpt.rank"):].isdigit()]
    single = checkpoint_path(store)
    return files + ([single] if single.exists() else [])


def rank_checkpoints(store: Path) -> list[Path]:
    return [p for p in checkpoint_files(store) if p != checkpoint_path(store)]


def load_all(store: Path, discard: bool) -> Checkpoint | None:
    """One process resuming a torchrun job: the union of every checkpoint there is."""
    files = checkpoint_files(store)
    if discard:
        log.warning(f"deleting the checkpoints {', '.join(p.name for p in files)} (--discard-checkpoint)")
        for p in files:
            p.unlink(missing_ok=True)
        return None
    return merge_checkpoints([load_checkpoint(p) for p in files])


def remove_checkpoints(store: Path) -> None:
    """Once the store is written: every checkpoint of any world size."""
    for p in checkpoint_files(store):
        p.unlink(missing_ok=True)


def merge_checkpoints(cks: list[Checkpoint]) -> Checkpoint | None:
    """One checkpoint equal to the union of ``cks`` (top-k merged exactly, real records by
    image; merging is idempotent, so overlapping checkpoints are fine); ``complete`` when
    every image of the list has a record. ``runner.py`` then compares its fingerprint."""
    if not cks:
        return None
    for ck in cks[1:]:
        if ck.fingerprint != cks[0].fingerprint:
            diff = ", ".join(differences(cks[0].fingerprint, ck.fingerprint))
            raise CheckpointError(f"the checkpoints of this store belong to different runs ({diff} differ); "
                                  f"pass --discard-checkpoint to delete them and start over")
    records = Records()
    for ck in cks:
        records.merge_from(ck.records, exclude=OTHER)  # setdefault by image, in checkpoint order
    complete = len(records) == int(cks[0].fingerprint["images"]["count"])
    return Checkpoint(cks[0].fingerprint, complete, max(ck.batches for ck in cks), records,
                      merge_layer_states(RunningTopK, [ck.tops for ck in cks]),
                      merge_layer_states(PooledVectors, [ck.pooled for ck in cks]),
                      unite_contributions([ck.stats for ck in cks]))


def _extra_copies(records: Records) -> np.ndarray:
    """The indices of the "ok" records whose content an "ok" record of a lower index holds, ascending."""
    idx = records.indices()
    idx = idx[records.ok[idx]]
    _, first = np.unique(records.key[idx], return_index=True)
    keep = np.zeros(len(idx), bool)
    keep[first] = True
    return idx[~keep]


def owner(name: str, world: int) -> int:
    """The rank that reads the file called ``name`` (its path relative to the images root, as the
    store records it): stable across runs, machines and world sizes of the same name, and needs
    no file contents."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()[:8], "big") % world


def owners(source, world: int) -> np.ndarray:
    """(N,) int: the rank of every file of ``source`` (see :func:`owner`)."""
    return np.fromiter((owner(source.relname(i), world) for i in range(len(source.paths))), dtype=np.int64,
                       count=len(source.paths))


@dataclass(frozen=True)
class Share:
    """Which files rank ``rank`` of ``world`` reads: those whose name hashes to it (:func:`owner`).
    ``Dist`` is one too (with the owners of a source cached)."""

    rank: int
    world: int

    def owners(self, source) -> np.ndarray:
        return owners(source, self.world)


class RankShare(SkipKnown):
    """The loader's view for one rank: only the files of ``indices`` that ``share`` owns (a
    ``Share`` or a ``Dist``); they are read once each (``meter`` counts the bytes)."""

    def __init__(self, source, prep, indices, known, share: Share | Dist, meter=None) -> None:
        owned = share.owners(source)
        indices = np.arange(len(source.paths)) if indices is None else np.asarray(indices, np.int64).reshape(-1)
        super().__init__(source, prep, indices[owned[indices] == share.rank], known, meter)
        self.rank, self.world = share.rank, share.world


class _Progress:
    """Rank 0's bar over all files, fed by every rank through the rendezvous store."""

    KEY = "mine/progress"

    def __init__(self, d: "Dist", state: StreamState, total: int, initial: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.d, self.state, self.shown = d, state, initial
        self.store = None
        try:
            self.store = tdist.distributed_c10d._get_default_store()
        except Exception:  # noqa: BLE001 - no store: rank 0 estimates from its own share
            pass
        self.bar = tqdm(total=total, initial=initial, unit="img", desc=f"mining ({d.world} processes)",
                        disable=not enabled or d.rank != 0, smoothing=0.1)

    def update(self, n: int) -> None:
        records = self.state.records
        newest = records.newest(n)  # the last n records added: this batch's
        mine = len(newest) - records.count_reason(OTHER, among=newest)
        done = None
        if self.store is not None:
            try:
                done = self.bar.initial + int(self.store.add(self.KEY, mine))  # add returns the new sum
            except Exception:  # noqa: BLE001 - progress must never fail a run
                self.store = None
        if done is None:
            done = self.bar.n + mine * self.d.world  # estimate from this rank's share
        if self.d.rank == 0 and done > self.bar.n:
            self.bar.update(min(done, self.bar.total) - self.bar.n)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    t0: float = field(default_factory=time.perf_counter)
    ranks: list[dict] = field(default_factory=list)
    _owned: tuple | None = None  # (source, owners(source)) cached
    _todo: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # this rank's files streamed now

    # --- collectives that turn a lost peer into one clear error -----------------------
    def _call(self, fn, *args):
        try:
            return fn(*args)
        except (RuntimeError, tdist.DistBackendError) as e:
            why = str(e).splitlines()[0].split("] ")[-1][:100]
            raise PeerLost(f"rank {self.rank}: another process of this job stopped ({why}); the progress of "
                           f"every rank is checkpointed: re-run the same command") from None

    def agree(self, error: BaseException | None) -> None:
        """Every rank passes its own failure (or None); if any rank failed, every rank raises
        (its own error, or the first rank's), so the job fails as one."""
        errors: list = [None] * self.world
        self._call(tdist.all_gather_object, errors, None if error is None else (type(error), str(error)))
        if error is not None:
            raise error
        for r, e in enumerate(errors):
            if e is not None:
                cls, msg = e
                try:
                    raise cls(f"rank {r}: {msg}")
                except TypeError:
                    raise RuntimeError(f"rank {r}: {msg}") from None

    def barrier(self) -> None:
        self.agree(None)

    def check_same_arguments(self, config: dict, stats) -> None:
        """Before any work: every rank must run the same resolved configuration (ranks started by
        hand, or by a launcher that passed different arguments, would otherwise fail later, one
        rank in a collective and the other told to re-run what can never succeed). Refuses in one
        line (``ValueError``, exit 2) on every rank, naming the options that differ. ``stats.ranks``
        gets every rank's identity (rank, host, pid, device) first, so the run record lists every rank
        whatever happens next (a rank killed before the end included)."""
        import json

        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
        info = {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(), "device": str(self.device)}
        everything = self.gather_all((digest, config, info))
        self.ranks = stats.ranks = [i for _, _, i in everything]
        for r, (d, other, _) in enumerate(everything):
            if d != everything[0][0]:
                keys = sorted(k for k in set(config) | set(other) if everything[0][1].get(k) != other.get(k))
                shown = ", ".join(f"{k} ({everything[0][1].get(k)!r} vs {other.get(k)!r})" for k in keys)
                raise ValueError(f"the ranks of this torchrun job were started with different arguments: rank {r} "
                                 f"differs from rank 0 in {shown or 'its configuration'}; start every rank with the "
                                 f"same command")

    # --- lock and checkpoints ------------------------------------------------------------
    @contextmanager
    def store_lock(self, store: Path):
        """Rank 0 holds ``STORE.lock`` for the whole job; its refusal is every rank's."""
        lock, err = None, None
        if self.rank == 0:
            try:
                lock = StoreLock(store).acquire()
                remove_stale_temps(store)
                for p in store.parent.glob(f".{store.name}.ckpt.rank*.tmp-*"):  # the old job is gone
                    p.unlink(missing_ok=True)
            except Exception as e:  # noqa: BLE001 - passed to every rank
                err = e
        try:
            self.agree(err)
            yield
        finally:
            if lock is not None:
                lock.release()

    def checkpoint_path(self, store: Path) -> Path:
        return rank_checkpoint(store, self.rank)

    def load_checkpoints(self, store: Path, discard: bool) -> Checkpoint | None:
        """The union of every checkpoint of ``store`` (see ``merge_checkpoints``); all ranks
        have read them before any rank may remove one."""
        files, err, ck = checkpoint_files(store), None, None
        try:
            if discard:
                if self.rank == 0 and files:
                    log.warning(f"deleting the checkpoints {', '.join(p.name for p in files)} "
                                f"(--discard-checkpoint)")
            else:
                ck = merge_checkpoints([load_checkpoint(p) for p in files])
        except CheckpointError as e:
            err = e
        self.agree(err)
        if discard and self.rank == 0:
            for p in files:
                p.unlink(missing_ok=True)
        if discard:
            self.barrier()
        return ck

    def remove_checkpoints(self, store: Path) -> None:
        if self.rank == 0:
            remove_checkpoints(store)

    # --- streaming -----------------------------------------------------------------------
    def owners(self, source) -> np.ndarray:
        if self._owned is None or self._owned[0] is not source:
            self._owned = (source, owners(source, self.world))
        return self._owned[1]

    def owns(self, source, index: int) -> bool:
        return int(self.owners(source)[index]) == self.rank

    def dataset(self, source, prep, todo, known, meter=None) -> RankShare:
        ds = RankShare(source, prep, todo, known, self, meter)
        self._todo = np.asarray(ds.indices, np.int64)
        return ds

    def progress(self, state: StreamState, total: int, initial: int, enabled: bool) -> _Progress:
        return _Progress(self, state, total, initial, enabled)

    def capture(self, make):
        """None: the capture (``mining.capture``) is single-process only; in a torchrun job finalize
        re-runs every kept image, split across the ranks in fixed batches."""
        return None

    def combine_stream(self, state: StreamState, stats, source=None, prep=None, net=None,
                       precision: str = "fp32") -> None:
        """Every rank ends with the global state: top-k merged exactly, records of all ranks,
        a content fed by several ranks counted once (see the module docstring; ``source``,
        ``prep``, ``net`` run those copies again), and rank 0 knows every rank's throughput
        (for the run record)."""
        seconds = time.perf_counter() - self.t0
        own = state.records.subset(state.records.indices())
        records = Records()
        for recs in self.gather_all(own):
            records.merge_from(recs, exclude=OTHER)  # by image, the first rank's record
        extra = _extra_copies(records)  # every copy but the first path's of a content fed twice
        again = [i for i in extra.tolist() if source is not None and self.owns(source, i)]
        if again and state.stats is not None and net is not None:
            lost = self._uncount(state, {i: int(records.key[i]) for i in again}, source, prep, net, precision)
            if lost:
                log.warning("rank %d: %d duplicate image(s) changed since they were mined; the unit statistics "
                            "count them twice", self.rank, lost)
        records.set_reason(extra, False, "duplicate")
        fed_twice_now = int(np.isin(np.asarray(again, np.int64), self._todo).sum())
        self.merge_statistics(state)
        new = state.fed - fed_twice_now
        info = {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(), "device": str(self.device),
                "images_new": new, "bytes_read": stats.bytes_read, "seconds": round(seconds, 3),
                "images_per_s": round(new / seconds, 3) if seconds > 0 else None}
        state.records = records
        state.seen_keys = fed_keys(records)
        self.ranks = self.gather_all(info)
        stats.images_new = sum(i["images_new"] for i in self.ranks)
        stats.bytes_read = sum(i["bytes_read"] or 0 for i in self.ranks)
        stats.ranks = self.ranks

    def merge_statistics(self, state: StreamState) -> None:
        """Every rank's statistics of each layer in every rank's ``state``: the other ranks' top-k and
        pooled vectors merged into this rank's, in rank order (``mining.statistic``: exact, a key
        seen twice kept once), and the unit statistics' contributions of every rank united by id."""
        every = self.gather_all({family: {n: s.state() for n, s in layers.items()}
                                 for family, layers in state.statistics().items()})
        for family, layers in state.statistics().items():
            for name, s in layers.items():
                merge_states(s, [every[r][family][name] for r in range(self.world) if r != self.rank])
        state.rebase_stats(unite_contributions(self.gather_all(state.stats_parts())))

    def _uncount(self, state: StreamState, keys: dict[int, int], source, prep, net, precision: str) -> int:
        """Subtract the statistics of the images ``keys`` (this rank's files: index -> key mined) once;
        how many could not be (their file no longer holds the content mined)."""
        from ..data import ImageDataset
        from .unitstats import stream_stats

        indices = list(keys)
        ds = ImageDataset(source, prep, indices)

        def fetch(j: int):
            def get() -> dict:
                rec = ds[j]
                if int(rec["key"]) != keys[indices[j]]:
                    rec.update(ok=False, reason="changed")
                return rec
            return get

        again = stream_stats([fetch(j) for j in range(len(indices))], net, list(state.tops), prep, self.device,
                              precision)
        first = next(iter(again.values()))
        for n, s in again.items():
            state.stats[n].merge(s, sign=-1)
        return len(indices) - int(first.images)

    def serve_kept(self, parts, layers: list[str], k: int, net, source, prep) -> None:
        """Before finalize: the kept images that the last part (this pass) provides are read by
        the ranks that own their files and sent to the rank whose finalize batch holds them; the
        part's ``record_of`` serves them from memory (and reads the file only for a kept image
        this exchange missed). Mirrors ``mining.finalize``'s assignment: kept keys sorted, no
        capture, fixed batches of ``FINAL_BATCH``, batch j on rank ``j % world``."""
        from ..data import ImageDataset
        from ..mining.finalize import FINAL_BATCH

        fresh = parts[-1]
        tops = union_tops(parts, layers, net, k)
        keys = torch.cat([tops[n].result()["keys"].flatten() for n in layers])
        kept = torch.unique(keys[keys >= 0]).tolist()
        served = {key for key in kept if not any(key in p.pixel_keys for p in parts[:-1]) and key in fresh.pixel_keys}
        where = {key: (row // FINAL_BATCH) % self.world for row, key in enumerate(kept) if key in served}
        owned = self.owners(source)
        files: dict[int, list[int]] = {}  # key -> source indices holding it (the fresh table is in source order)
        table = fresh.table
        for i in range(len(table["key"])):
            if str(table["status"][i]) in ("ok", "duplicate") and int(table["key"][i]) in served:
                files.setdefault(int(table["key"][i]), []).append(i)
        ds = ImageDataset(source, prep)
        outgoing: list[dict] = [{} for _ in range(self.world)]
        for key, idx in files.items():
            if int(owned[idx[0]]) != self.rank:  # the first file's owner reads it (or a copy it owns)
                continue
            rec = None
            for i in [j for j in idx if int(owned[j]) == self.rank]:
                rec = ds[i]
                if int(rec["key"]) == key:
                    break
            outgoing[where[key]][key] = rec
        received: dict[int, dict] = {}
        for dst in range(self.world):
            got = [None] * self.world if dst == self.rank else None
            self._call(tdist.gather_object, outgoing[dst], got, dst)
            if got is not None:
                for part in got:
                    received.update(part)
        read = fresh.record_of
        fresh.record_of = lambda key: received[key] if key in received else read(key)

    # --- finalize --------------------------------------------------------------------------
    @property
    def peers(self) -> "Dist":
        """Finalize splits its batches across the ranks (``mining.finalize``'s ``dist``)."""
        return self

    def share(self, n_batches: int) -> list[int]:
        """Finalize batches this rank re-runs."""
        return list(range(self.rank, n_batches, self.world))

    def gather_all(self, obj) -> list:
        """``obj`` of every rank, on every rank (a list by rank)."""
        out: list = [None] * self.world
        self._call(tdist.all_gather_object, out, obj)
        return out

    def gather_to_root(self, obj):
        """``obj`` of every rank on rank 0 (a list by rank), None elsewhere."""
        out = [None] * self.world if self.rank == 0 else None
        self._call(tdist.gather_object, obj, out, 0)
        return out


def join(device_name: str) -> Dist | None:
    """The rank's ``Dist`` under torchrun (process group opened here), else None."""
    if not under_torchrun():
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name in ("auto", "cuda") or device_name.startswith("cuda"):
        cuda = torch.cuda.is_available() and device_name != "cpu"
    else:
        cuda = False
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        resolve_device(device_name)  # raises the usual one-line error
    if cuda:
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = resolve_device("cpu")
    if not tdist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
        tdist.init_process_group(backend, timeout=datetime.timedelta(hours=2),
                                 device_id=device if cuda else None)
        _opened.append(True)
    return Dist(rank, world, local, device)


_opened: list[bool] = []  # join() opened the process group (a caller's own group is left alone)


def leave() -> None:
    """Close the process group ``join`` opened. Without it the interpreter exits with gloo's threads
    still running and, now and then, C++ aborts the process (``terminate called without an active
    exception``, exit -6) after the job's own one-line error: the exit code would lie."""
    if _opened and tdist.is_initialized():
        _opened.clear()
        try:
            tdist.destroy_process_group()
        except Exception:  # noqa: BLE001 - leaving must not hide the job's own outcome
            pass
