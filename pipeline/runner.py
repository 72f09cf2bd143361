"""`mine run` as a Python function: resolve, stream, finalize, write.

``RunConfig`` holds every option of the command; ``run(cfg)`` returns a
``RunResult``. A notebook user calls exactly what the CLI calls.

A run is a job that survives crashes (``pipeline/jobs`` has one module per
guarantee): it holds ``STORE.lock`` while it works, checkpoints the streaming
pass to ``STORE.ckpt`` (every ``checkpoint_every`` and on SIGINT/SIGTERM), and
re-running the same command resumes from the checkpoint to the same store an
uninterrupted run writes. An existing complete store is only replaced with
``force`` or extended with ``update`` (only new image contents are mined, then
merged exactly). The store is written atomically, then the checkpoint removed.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig, check_options
from .data import ImageDataset, Preprocessing, make_loader, resolve_images
from .data.preprocess import options
from .devices import channels_last, pin_memory
from .faults import pause_point
from .job_errors import CheckpointMismatch, Interrupted, SourceChanged, StoreExistsError, WriteError
from .jobs.checkpoint import Checkpoint, checkpoint_of, differences, fingerprint_id, image_list_id, save_checkpoint
from .jobs.combine import Combined, Part, check_compatible, combine, config_of_run, config_of_store, part_from_store
from .jobs.distributed import Dist, leave
from .jobs.output import store_target, write_isolated
from .jobs.record import JobStats
from .jobs.strategy import Solo, join
from .jobs.unitstats import MiningSetup
from .jobs.update import KNOWN, known_keys, list_stats, resolve_known_rows, unchanged
from .mining.capture import Capture, batch_invariant
from .mining.finalize import KeptImagesChanged
from .mining.keyset import KeySet
from .mining.records import Records
from .mining.stream import DTYPES, PassOptions, StreamState, fed_keys, new_state, stream
from .models.network import Network
from .models.weights import load_network
from .signals import InterruptGuard
from .store.read import Store
from .store.schema import StoreError
from .store.write import images_columns as store_images_columns
from .store.write import write_store
from .versions import versions

log = logging.getLogger("pipeline")


@dataclass
class RunResult:
    store: Path
    images_seen: int
    images_skipped: int
    seconds: float
    layers: list[str] = field(default_factory=list)
    images_new: int = 0  # decoded and mined by this invocation
    images_known: int = 0  # skipped by --update: the store already held their content
    images_resumed: int = 0  # restored from a checkpoint
    mode: str = "fresh"  # fresh | resume | update | update-resume | already-complete

    def summary(self) -> str:
        rate = self.images_new / self.seconds if self.seconds else 0.0
        extra = "".join(f", {n} {what}" for n, what in ((self.images_known, "already in the store"),
                                                        (self.images_resumed, "resumed from checkpoint")) if n)
        n = self.images_seen
        return (f"{n} image{'s' * (n != 1)} seen, {self.images_skipped} skipped, {self.images_new} mined{extra}, "
                f"{self.seconds:.1f} s ({rate:.1f} img/s) -> {self.store}")


def parse_every(text: str | int) -> tuple[int | None, float | None]:
    """``"50"`` -> every 50 batches; ``"90s"``, ``"5m"``, ``"1h"`` -> by time; ``"0"`` -> never."""
    t = str(text).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smh]?)", t)
    if not m:
        raise ValueError(f"--checkpoint-every {text!r}: give a number of batches (50) or a time (90s, 5m, 1h)")
    n, unit = float(m.group(1)), m.group(2)
    if not unit:
        if n != int(n):
            raise ValueError(f"--checkpoint-every {text!r}: a number of batches must be whole")
        return (int(n) or None), None
    return None, (n * {"s": 1, "m": 60, "h": 3600}[unit]) or None


def preprocessing_options(cfg: RunConfig) -> dict | None:
    """The run's preprocessing choices as one ``data.preprocess.resolve`` layer (None: none)."""
    return options(cfg.preprocessing, cfg.channels, cfg.mean, cfg.std)


def default_store_path(cfg: RunConfig, layers: list[str]) -> Path:
    """``mine-<model>-<layers>-<images>.h5`` in the current folder."""
    tag = "_".join(layers) if len(layers) <= 3 else f"{len(layers)}layers"
    images = re.sub(r"[^A-Za-z0-9]+", "_", cfg.images).strip("_") or "images"
    return Path(f"mine-{cfg.model}-{tag}-{images}.h5")


TABLE_CHUNK = 8192  # rows whose text (name, digest, label) is made at a time


def images_table(source, records: Records, listed: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One row per source file in path order (see ``store.write.images_columns``: the first path of
    each content used is "ok", the others "duplicate"); ``listed``: (N, 3) (size, mtime_ns, ctime_ns)
    of the files this invocation listed, -1 for the others (``jobs.update``). Built as columns: no
    tuple per file, and the text columns are filled :data:`TABLE_CHUNK` rows at a time."""
    n = len(source.paths)
    missing = records.missing(n)
    if len(missing):
        raise KeyError(int(missing[0]))
    meta = np.full((n, 3), -1, np.int64) if listed is None else listed
    path, sha, label = (np.empty(n, dtype=object) for _ in range(3))
    for lo in range(0, n, TABLE_CHUNK):
        rows = range(lo, min(lo + TABLE_CHUNK, n))
        path[lo:rows.stop] = [source.relname(i) for i in rows]
        sha[lo:rows.stop] = records.hexes(np.arange(lo, rows.stop))
        label[lo:rows.stop] = [source.label(i) for i in rows]
    labelled = np.fromiter((v is not None for v in label), bool, count=n)
    label[~labelled] = ""
    return store_images_columns({
        "path": path, "sha256": sha, "key": records.key[:n].copy(), "status": _statuses(records, n),
        "width": records.width[:n].copy(), "height": records.height[:n].copy(), **({"label": label} if labelled.any() else {}),
        "size": meta[:, 0], "mtime_ns": meta[:, 1], "ctime_ns": meta[:, 2]})


def _statuses(records: Records, n: int) -> np.ndarray:
    """Each file's status for ``store.write.images_columns``: None for a content used ("ok" or
    "duplicate", decided there), "skipped: <reason>" (one str object a reason) for the rest."""
    status = np.empty(n, dtype=object)  # None
    texts = np.empty(len(records.reasons), dtype=object)
    texts[:] = [f"skipped: {t}" for t in records.reasons]
    skipped = ~(records.ok[:n] | records.reason_mask(np.arange(n), "duplicate"))
    status[skipped] = texts[records.reason[:n][skipped]]
    return status


def _warn(msg: str) -> None:
    log.warning(msg)


def _warn_skipped(source, records: Records, shown: int = 5) -> None:
    """One warning line for the files this pass skipped: how many, why, the first few names."""
    idx = records.indices()
    bad = idx[~records.reason_mask(idx, "", KNOWN, "duplicate")]
    if not len(bad):
        return
    codes = records.reason[bad]
    used, first, counts = np.unique(codes, return_index=True, return_counts=True)
    why = Counter()  # in order of first appearance, as most_common breaks ties
    for j in np.argsort(first, kind="stable").tolist():
        why[records.reasons[int(used[j])].split(":")[0]] += int(counts[j])
    first = [(i, records.reasons[c]) for i, c in zip(bad[:shown].tolist(), codes[:shown].tolist())]
    names = ", ".join(f"{source.relname(i)} ({reason})" for i, reason in first)
    _warn(f"{len(bad)} of {len(source.paths)} images skipped ({', '.join(f'{n} {w}' for w, n in why.most_common())}): "
          f"{names}{f' and {len(bad) - shown} more' if len(bad) > shown else ''}; the store's /images/status "
          f"records each")


def _store_inputs_id(path: Path) -> str | None:
    """The ``inputs_id`` of a complete, valid store at ``path``, None if absent/damaged/incomplete."""
    try:
        with Store(path) as s:
            return s.attrs.get("inputs_id")
    except StoreError:  # any other file simply is not "our" store
        return None


def _store_state(path: Path) -> str:
    """"complete", or why the file at ``path`` is not a usable store."""
    try:
        with Store(path):
            return "complete"
    except Exception as e:  # noqa: BLE001
        return str(e)


class _Schedule:
    """When to write a periodic checkpoint (every N batches or every T seconds)."""

    def __init__(self, every: tuple[int | None, float | None]) -> None:
        self.batches, self.seconds = every
        self.reset()

    def reset(self) -> None:
        self.since, self.t = 0, time.monotonic()

    def due(self) -> bool:
        self.since += 1
        return bool((self.batches and self.since >= self.batches)
                    or (self.seconds and time.monotonic() - self.t >= self.seconds))


#: Bounds of ``k`` (README "Limits"). A channel keeps at most one entry per image, so a k above the
#: collection's size only adds empty slots, yet every slot costs memory while mining (about 256
#: bytes: top-k state, merges, finalize; measured 2.25 GB peak RSS for 5.1 M slots) and 44 bytes in
#: the store. ``--k 100000`` over 8 images used 7.7 GB; ``--k 10**12`` was a traceback.
MAX_K = 10_000
MAX_SLOTS = 2**23  # k x (channels summed over the mined layers): about 2 GiB while mining


def check_k(k: int, channels: int | None = None) -> None:
    """Refuse (``ValueError``, exit 2) a ``k`` above :data:`MAX_K`, or one whose slots over
    ``channels`` (summed over the mined layers) exceed :data:`MAX_SLOTS`."""
    if k > MAX_K:
        raise ValueError(f"--k {k} is above the largest k a store holds, {MAX_K}")
    if channels and k * channels > MAX_SLOTS:
        raise ValueError(f"--k {k} over {channels} channels is {k * channels} slots, above the limit of {MAX_SLOTS} "
                         f"(about 2 GiB while mining); use --k {MAX_SLOTS // channels} or fewer, or fewer layers")


def run(cfg: RunConfig, net: Network | None = None, stats: JobStats | None = None) -> RunResult:
    """Mine ``cfg.layer`` over ``cfg.images`` and write the store; returns where and how much.

    ``stats`` (optional) is filled in as the job goes, so a caller can report a failed
    job's progress (the CLI's run record does).
    """
    t0 = time.perf_counter()
    stats = stats if stats is not None else JobStats()
    check_options(dataclasses.asdict(cfg))
    check_k(cfg.k)
    if cfg.precision not in DTYPES:
        raise ValueError(f"unknown precision {cfg.precision!r}; use {', '.join(DTYPES)}")
    if cfg.update and cfg.force:
        raise ValueError("--update and --force exclude each other: --update extends a store, --force replaces it")
    every = parse_every(cfg.checkpoint_every)
    try:
        return _run_job(cfg, net, _Tally(stats, t0, every))
    finally:
        leave()


@dataclass(frozen=True)
class _Tally:
    """How far the job got (``stats``, for the run record), since when, and how often to checkpoint."""

    stats: JobStats
    t0: float
    every: tuple[int | None, float | None]


@dataclass(frozen=True)
class Job:
    """One run, resolved: what every step below works on (the images, the network, the store,
    this process's part in the job)."""

    cfg: RunConfig
    net: Network
    layers: list[str]
    pooled: list[str]
    prep: Preprocessing
    source: object  # a data.sources image source
    path: Path  # the store (a symlink's target)
    strategy: Solo | Dist  # alone, or one rank of torchrun (jobs.strategy)
    guard: InterruptGuard
    tally: _Tally

    @property
    def stats(self) -> JobStats:
        return self.tally.stats

    @property
    def ck_path(self) -> Path:
        return self.strategy.checkpoint_path(self.path)

    def result(self) -> RunResult:
        s = self.stats
        return RunResult(self.path, len(self.source.paths), s.images_skipped, time.perf_counter() - self.tally.t0,
                         self.layers, s.images_new, s.images_known, s.images_resumed, s.mode)


def _run_job(cfg: RunConfig, net, tally: _Tally) -> RunResult:
    """Resolve the images and model, take the lock, run."""
    # Signals end the run at once until the streaming pass, which stops them at a batch boundary.
    with InterruptGuard(graceful=False) as guard:
        strategy = join(cfg.device)  # one process, or this rank of a torchrun job
        # every rank the same arguments, before any work; the record lists every rank
        strategy.check_same_arguments(dataclasses.asdict(cfg), tally.stats)
        job = _resolve(cfg, net, strategy, guard, tally)
        with strategy.store_lock(job.path):  # torchrun: rank 0 holds the lock for every rank
            return _run_locked(job)


def _resolve(cfg: RunConfig, net, strategy, guard: InterruptGuard, tally: _Tally) -> Job:
    """The images, the network and its layers, the store path: everything checked before the lock."""
    path = Path(cfg.out) if cfg.out else Path(cfg.update) if cfg.update else None
    if path is not None and store_target(path).is_dir():
        raise ValueError(f"{path} is a folder; name the store file, e.g. {path / 'store.h5'}")
    source = resolve_images(cfg.images, cfg.data_root)
    wanted = preprocessing_options(cfg)
    if net is not None and wanted:
        raise ValueError("run(cfg, net): give the preprocessing to load_network, not to RunConfig")
    net = net or load_network(cfg.model, cfg.weights, cfg.size, wanted)
    layers = net.select(cfg.layer)
    check_k(cfg.k, sum(net.layers[n].channels for n in layers))
    pooled = net.select(cfg.pooled) if cfg.pooled else []
    prep = net.prep(cfg.size, cfg.resize)
    if cfg.limit:
        source = source.head(cfg.limit)
    path = store_target(path or default_store_path(cfg, layers))
    tally.stats.store = str(path)
    return Job(cfg, net, layers, pooled, prep, source, path, strategy, guard, tally)


def _run_locked(job: Job) -> RunResult:
    """Resume or start, stream with checkpoints, finalize, write the store atomically, remove the
    checkpoint."""
    ck = job.strategy.load_checkpoints(job.path, job.cfg.discard_checkpoint)  # every rank reads every one
    run_config = config_of_run(job.net, job.prep, job.cfg.k, job.layers, job.cfg.precision, job.pooled)
    source = job.source
    fingerprint = {**run_config, "images": image_list_id(str(source.root), map(source.relname, range(len(source.paths)))),
                   "base": None}
    if _already_complete(job, ck, fingerprint):
        return _finish_complete(job)
    base = _Base.open(job, run_config, fingerprint)
    try:
        state, complete = _resume_or_start(job, ck, fingerprint, base)
        combined = _mine(job, _Pass(fingerprint, base, state, complete))
        base.close()  # the output may replace it
        _write(job, combined, fingerprint)
        _remove_checkpoints(job)
    finally:
        base.close()
    return job.result()


def _already_complete(job: Job, ck: Checkpoint | None, fingerprint: dict) -> bool:
    """Killed after the store was written but before the checkpoint was removed? (For an in-place
    --update the base is that new store now, hence "base" may differ.)"""
    return (ck is not None and not job.cfg.force and job.path.exists()
            and _store_inputs_id(job.path) == fingerprint_id(ck.fingerprint)
            and set(differences(ck.fingerprint, fingerprint)) <= {"base"})


def _finish_complete(job: Job) -> RunResult:
    """The store is already written: remove the checkpoints, report the store's counts."""
    job.strategy.barrier()
    job.strategy.remove_checkpoints(job.path)
    job.ck_path.unlink(missing_ok=True)
    job.stats.mode = "already-complete"
    with Store(job.path) as s:
        return RunResult(job.path, len(job.source.paths), int(s.attrs["images_skipped"]),
                         time.perf_counter() - job.tally.t0, job.layers, mode=job.stats.mode)


@dataclass
class _Base:
    """The store ``--update`` extends (all None / empty without one)."""

    store: Store | None = None
    part: Part | None = None
    known: KeySet = field(default_factory=KeySet)  # the keys of the contents it holds
    path: Path | None = None

    @classmethod
    def open(cls, job: Job, run_config: dict, fingerprint: dict) -> "_Base":
        """Open and check ``--update``'s store; its identity goes into ``fingerprint["base"]``."""
        path = store_target(Path(job.cfg.update)) if job.cfg.update else None
        if path is not None and not path.exists():
            _warn(f"--update {path}: no such store yet; mining every image into a new one")
            path = None
        if path is None:
            return cls()
        base = cls(Store(path), path=path)
        try:
            check_compatible(config_of_store(base.store.attrs), str(path), run_config, "this run")
            base.part = part_from_store(base.store, job.layers)
        except BaseException:
            base.close()
            raise
        base.known = known_keys(base.part.table)
        fingerprint["base"] = {"path": str(path.resolve()),
                               "id": base.store.attrs.get("inputs_id") or base.store.attrs.get("created")}
        return base

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


def _new_state(job: Job) -> StreamState:
    """An empty streaming state; one process captures what finalize needs (``mining.capture``)."""
    state = new_state(job.net, job.layers, job.cfg.k, job.strategy.device, job.pooled)
    state.records.reserve(len(job.source.paths))
    state.capture = job.strategy.capture(lambda: new_capture(job.net, job.layers, job.prep, job.strategy.device,
                                                             job.cfg))
    return state


def _resume_or_start(job: Job, ck: Checkpoint | None, fingerprint: dict, base: _Base) -> tuple[StreamState, bool]:
    """The state to stream into: restored from ``ck`` when it belongs to this run, else empty;
    whether its streaming pass was complete. Refuses to overwrite an existing store unasked."""
    state, complete, ck = _new_state(job), False, _usable(job, ck, fingerprint)
    if ck is not None:
        state.restore(ck.records, ck.tops, ck.pooled, ck.stats)
        state.records.reserve(len(job.source.paths))
        if ck.stats is None:
            _warn(f"{job.ck_path} was written before mine kept unit statistics; the store will have none "
                  f"(re-run with --force to get them)")
        state.batches = ck.batches
        complete = ck.complete
    path = job.path
    if (ck is None and path.exists() and not job.cfg.force
            and not (base.path and base.path.resolve() == path.resolve())):
        why = _store_state(path)
        if why == "complete":
            raise StoreExistsError(f"{path} already exists and is complete; pass --update {path} to add new "
                                   f"images to it, or --force to replace it")
        raise StoreExistsError(f"{path} exists but is not a usable store ({why}); pass --force to replace it")
    job.stats.mode = (("update" if base.part else "fresh") if ck is None
                      else ("update-resume" if base.part else "resume"))
    job.stats.images_resumed = len(state.records)
    job.stats.images_seen = len(job.source.paths)  # streamed from here on: a run refused above saw none
    return state, complete


def _usable(job: Job, ck: Checkpoint | None, fingerprint: dict) -> Checkpoint | None:
    """``ck`` if it belongs to this run; None (with a warning) if only the image list changed;
    ``CheckpointMismatch`` if the command did."""
    if ck is None:
        return None
    diff = differences(ck.fingerprint, fingerprint)
    if diff == ["images"]:
        was, now = ck.fingerprint["images"]["count"], fingerprint["images"]["count"]
        _warn(f"the image list changed since {job.ck_path} was written ({was} files then, {now} now); "
              f"its progress cannot be reused, starting over")
        return None
    if diff:
        raise CheckpointMismatch(
            f"{job.ck_path} belongs to a run with a different {', '.join(diff)}; re-run that command to "
            f"finish it, or pass --discard-checkpoint to delete it and start over")
    return ck


@dataclass
class _Pass:
    """The streaming pass of this run: its fingerprint, the base store, the state it streams into,
    and whether that state is complete already (restored from a complete checkpoint)."""

    fingerprint: dict
    base: _Base
    state: StreamState
    complete: bool


def _mine(job: Job, mined: _Pass) -> Combined:
    """Stream with checkpoints, gather the ranks, finalize; once more from the start if kept images
    changed meanwhile."""
    source, base = job.source, mined.base
    # File metadata of what this invocation reads (this rank's share), taken before any read;
    # rows restored from a checkpoint get none (jobs.update).
    todo = mined.state.records.missing(len(source.paths))
    todo = todo[np.fromiter((job.strategy.owns(source, int(i)) for i in todo), bool, count=len(todo))]
    listed = list_stats(source, todo)
    skip = (unchanged(source, listed, base.part.table, base.store.attrs)
            if base.part is not None and not job.cfg.rehash else Records())
    del todo
    for attempt in (1, 2):
        mined.state.records.merge_from(skip)  # --update: unchanged files are known without being read
        _Streaming(job, mined).run()
        # every rank gets the global top-k and records
        job.strategy.combine_stream(mined.state, job.stats, source, job.prep, job.net, job.cfg.precision)
        # The checkpoint is complete from here on: a signal stops at once (guard.graceful is off).
        job.guard.hint = f"the streaming pass is saved in {job.ck_path}; re-run the same command to finish"
        parts = _parts(job, mined, listed)
        try:
            return combine(parts, MiningSetup(job.net, job.layers, job.cfg.k, job.prep, job.strategy.device,
                                              job.cfg.precision), dist=job.strategy.peers)
        except KeptImagesChanged as e:
            _start_over(job, e, attempt)
            mined.state, mined.complete, job.guard.hint = _new_state(job), False, ""
            job.stats.mode, job.stats.images_resumed = ("update" if base.part else "fresh"), 0
    raise AssertionError("unreachable: the second attempt returns or raises")


def _parts(job: Job, mined: _Pass, listed: np.ndarray) -> list[Part]:
    """The base store (--update) and this pass as parts for ``combine``; the images table counted."""
    source, state, strategy = job.source, mined.state, job.strategy
    if strategy.rank == 0:
        _warn_skipped(source, state.records)
    table = images_table(source, state.records, _gather_listed(strategy, listed))
    job.stats.images_known = state.records.count_reason(KNOWN)
    job.stats.images_skipped = len(state.records) - state.records.count_reason("", KNOWN, "duplicate")
    base = mined.base.part
    if base is not None:
        table = resolve_known_rows(table, base.table)
    parts = ([base] if base else []) + [fresh_part(job.cfg.images, source, job.prep, state, table)]
    # torchrun: each kept image read by the rank that owns its file, sent where finalize needs it
    strategy.serve_kept(parts, job.layers, job.cfg.k, job.net, source, job.prep)
    return parts


def _gather_listed(strategy, listed: np.ndarray) -> np.ndarray:
    """The file metadata every rank listed (each rank lists its own files; -1 for files not listed)."""
    rows = np.flatnonzero((listed != -1).any(axis=1))
    out = np.array(listed, copy=True)
    for idx, meta in strategy.gather_all((rows, listed[rows])):
        out[idx] = meta
    return out


def _start_over(job: Job, e: KeptImagesChanged, attempt: int) -> None:
    """The mined state describes file contents that are gone: it cannot be finalized, and a resume
    from it never could. Drop it (torchrun: every rank got the error and drops its own checkpoint)
    and mine the files as they are now, once."""
    job.ck_path.unlink(missing_ok=True)
    job.strategy.remove_checkpoints(job.path)  # every rank's too
    job.strategy.barrier()
    if attempt == 2:
        raise SourceChanged(
            f"{e}; they changed again while being mined: stop whatever writes to them and re-run "
            f"(the checkpoint was deleted, the next run mines from the start)") from None
    if job.strategy.rank == 0:
        _warn(f"{e}; mining all images again from the start")


def _store_attrs(job: Job, combined: Combined, fingerprint: dict) -> dict:
    net, cfg = job.net, job.cfg
    return {
        "model": net.arch, "weights": net.weights_name, "weights_hash": net.weights_hash,
        "preprocessing": job.prep.to_dict(),
        "k": cfg.k, "input_size": cfg.size, "images_spec": combined.spec, "images_root": combined.root,
        "layers": job.layers, "versions": versions(), "precision": cfg.precision,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "images_seen": combined.images_seen, "images_skipped": combined.images_skipped,
        "seconds": time.perf_counter() - job.tally.t0, "inputs_id": fingerprint_id(fingerprint),
        **({"pooled": list(job.pooled)} if job.pooled else {}),
    }


def _write(job: Job, combined: Combined, fingerprint: dict) -> None:
    """The store, atomically, in a forked writer (torchrun: by rank 0, the others wait for the outcome)."""
    path, attrs = job.path, _store_attrs(job, combined, fingerprint)
    if job.strategy.rank == 0:
        write_isolated(path, lambda: write_store(path, job.net, attrs, combined.table, combined.fin, combined.stats),
                       f"the previous store (if any) and the checkpoint {job.ck_path.name} are unchanged")
        job.guard.hint = f"the store {path} is complete"  # not "re-run to finish" from here on
    job.strategy.agree(None)
    job.guard.hint = f"the store {path} is complete"
    pause_point("store-written")


def _remove_checkpoints(job: Job) -> None:
    job.ck_path.unlink(missing_ok=True)
    job.strategy.remove_checkpoints(job.path)  # every rank's (torchrun: by rank 0)


def new_capture(net: Network, layers: list[str], prep: Preprocessing, device, cfg: RunConfig) -> Capture | None:
    """Pixels of the top-k candidates always (budget ``MINE_CAPTURE_MB``, default 2048; 0 turns
    capture off); their switches and values too when the streaming pass is float32, contiguous
    and batch-invariant, so finalize need not re-run them."""
    import os

    budget = float(os.environ.get("MINE_CAPTURE_MB", "2048"))
    if budget <= 0:
        return None
    exact = (cfg.precision == "fp32" and not channels_last(device, cfg.channels_last)
             and batch_invariant(net, layers, prep, device))
    return Capture(net.pools_through(layers), exact, budget)


def fresh_part(spec: str, source, prep: Preprocessing, state: StreamState, table: dict) -> Part:
    """This pass as a ``Part``: its kept images are re-read from the source files.

    A kept content is read from the file it was mined from or, if that file has changed
    since, from a duplicate that still holds it; finalize checks what comes back against
    the key (``KeptImagesChanged`` when no file holds the content any more).
    """
    records = state.records
    idx = records.indices()
    idx = idx[records.ok[idx] | records.reason_mask(idx, "duplicate")]
    # the files holding each content, the mined ("ok") file first, then by index
    idx = idx[np.lexsort((idx, ~records.ok[idx], records.key[idx]))]
    keys = records.key[idx]
    dataset = ImageDataset(source, prep)
    cap = state.capture

    def record_of(key: int) -> dict:
        px = cap.pixels(key) if cap is not None else None  # no second decode of a captured image
        if px is not None:  # the pixels mined: no check needed
            return {"ok": True, "reason": "", "pixels": torch.from_numpy(px)}
        lo, hi = np.searchsorted(keys, key, side="left"), np.searchsorted(keys, key, side="right")
        if lo == hi:
            raise KeyError(key)
        read = (dataset[i] for i in idx[lo:hi].tolist())
        first = next(read)
        return first if first["key"] == key else next((r for r in read if r["key"] == key), first)

    captured = {k: v for k, v in cap.items.items() if v[1] is not None} if cap is not None else {}
    return Part("this run", spec, str(source.root), table, state.tops, record_of, KeySet(keys),
                dict(state.pooled), state.total_stats(), fed_keys(records).array(), captured)


class _Streaming:
    """The streaming pass over the images without a record, checkpointed; on return the
    checkpoint is complete and later signals interrupt at once (see ``pipeline.signals``)."""

    def __init__(self, job: Job, mined: _Pass) -> None:
        self.job, self.mined, self.state = job, mined, mined.state
        self.total = len(job.source.paths)
        self.todo = self.state.records.missing(self.total)  # the indices without a record, ascending
        self.saved_at = self.state.batches
        self.meter, self.bytes0 = None, 0
        self.schedule = _Schedule(job.tally.every)
        self.bar = None

    def run(self) -> None:
        guard = self.job.guard
        self.job.net.to(self.job.strategy.device)  # also for finalize, when resuming from a complete checkpoint
        if not self.mined.complete:
            self._stream()
        guard.graceful = False
        if guard.requested:  # a signal arrived after the last batch
            raise self.stopped(guard.requested)

    def _stream(self) -> None:
        job, cfg, device = self.job, self.job.cfg, self.job.strategy.device
        nhwc = channels_last(device, cfg.channels_last)
        job.guard.graceful = True  # a signal now stops at the next batch boundary (or after GRACE_S)
        if nhwc:
            job.net.model.to(memory_format=torch.channels_last)
        self.meter = multiprocessing.Value("q", 0)  # bytes read, by this process and its loader workers
        self.bytes0 = job.stats.bytes_read or 0
        # torchrun: this rank's files only
        dataset = job.strategy.dataset(job.source, job.prep, self.todo, self.mined.base.known, self.meter)
        loader = make_loader(dataset, cfg.batch_size, cfg.workers, pin_memory(device))
        self.saved_at = self.state.batches
        self.bar = job.strategy.progress(self.state, self.total, self.total - len(self.todo), cfg.progress)
        try:
            with self.bar:
                stream(job.net, self.state, loader, job.prep, device,
                       PassOptions(DTYPES[cfg.precision], nhwc, self.on_batch))
        except WriteError:  # a failed checkpoint write is not retried
            raise
        except BaseException:
            if self._saved_after_failure() and job.guard.requested:
                raise self.stopped(job.guard.requested) from None
            raise
        job.stats.images_new = self.state.fed
        job.stats.bytes_read = self.bytes0 + self.meter.value
        self.save(True)

    def on_batch(self, n: int, bad: int) -> None:
        guard, stats = self.job.guard, self.job.stats
        self.bar.update(n)
        stats.images_new, stats.bytes_read = self.state.fed, self.bytes0 + self.meter.value
        pause_point("stream", until=lambda: guard.requested is not None)
        if guard.requested:
            self.save(False)
            self.saved_at = self.state.batches
            raise self.stopped(guard.requested)
        if self.schedule.due():
            self.save(False)
            self.saved_at = self.state.batches
            self.schedule.reset()

    def _saved_after_failure(self) -> bool:
        """Out of memory, a dead loader worker (Ctrl-C reaches them too), a signal whose batch did
        not end in time, a bug: keep what was folded so far (the error is reported after). Between
        batches the state is consistent; ``dirty`` marks the commit in between. Whether a checkpoint
        holds every batch folded."""
        state = self.state
        saved = state.batches == self.saved_at and self.job.ck_path.exists()
        if not saved and not state.dirty and (state.batches > self.saved_at or self.job.guard.requested):
            try:
                self.save(False)
                saved = True
            except BaseException as e2:  # noqa: BLE001 - the first error is the one to report
                _warn(f"could not save a checkpoint after the failure: {e2}")
        return saved

    def save(self, done: bool) -> None:
        state = self.state
        save_checkpoint(self.job.ck_path, checkpoint_of(self.mined.fingerprint, done, state))

    def stopped(self, sig: str) -> Interrupted:
        return Interrupted(f"interrupted by {sig}: progress saved to {self.job.ck_path} ({len(self.state.records)} "
                           f"of {self.total} images); re-run the same command to resume")
