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
from tqdm import tqdm

from .config import RunConfig, check_options
from .data import ImageDataset, Preprocessing, make_loader, resolve_images
from .data.preprocess import options
from .devices import resolve_device
from .faults import pause_point
from .job_errors import CheckpointMismatch, Interrupted, SourceChanged, StoreExistsError, WriteError
from .jobs import distributed
from .jobs.checkpoint import (
    Checkpoint,
    checkpoint_path,
    differences,
    fingerprint_id,
    image_list_id,
    load_checkpoint,
    save_checkpoint,
)
from .jobs.combine import Part, check_compatible, combine, config_of_run, config_of_store, part_from_store
from .jobs.output import remove_stale_temps, store_target, write_isolated
from .jobs.record import JobStats
from .jobs.update import KNOWN, SkipKnown, known_keys, list_stats, resolve_known_rows, unchanged
from .lock import StoreLock
from .mining.capture import Capture, batch_invariant
from .mining.finalize import KeptImagesChanged
from .mining.stream import DTYPES, ImageRecord, StreamState, new_state, stream
from .models.network import Network
from .models.weights import load_network
from .signals import InterruptGuard
from .store.read import Store
from .store.schema import StoreError
from .store.write import images_table as store_images_table
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


def images_table(source, records: dict[int, ImageRecord], listed: dict | None = None) -> dict[str, np.ndarray]:
    """One row per source file in path order (see ``store.write.images_table``); ``listed``:
    index -> (size, mtime_ns, ctime_ns) of the files this invocation listed (``jobs.update``)."""
    rows = []
    listed = listed or {}
    for i, path in enumerate(source.paths):
        r = records[i]
        used = r.ok or r.reason == "duplicate"
        rows.append((source.relpath(path), r.sha256, r.key, None if used else f"skipped: {r.reason}",
                     r.width, r.height, source.label(i), listed.get(i)))
    return store_images_table(rows)


def _warn(msg: str) -> None:
    log.warning(msg)


def _warn_skipped(source, records: dict[int, ImageRecord], shown: int = 5) -> None:
    """One warning line for the files this pass skipped: how many, why, the first few names."""
    bad = [(i, r.reason) for i, r in sorted(records.items()) if r.reason not in ("", KNOWN, "duplicate")]
    if not bad:
        return
    why = Counter(reason.split(":")[0] for _, reason in bad)
    names = ", ".join(f"{source.relpath(source.paths[i])} ({reason})" for i, reason in bad[:shown])
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
        return _run_job(cfg, net, stats, t0, every)
    finally:
        distributed.leave()


def _run_job(cfg: RunConfig, net, stats: JobStats, t0: float, every) -> RunResult:
    # Signals end the run at once until the streaming pass, which stops them at a batch boundary.
    with InterruptGuard(graceful=False) as guard:
        dist = distributed.join(cfg.device)  # distributed: None outside torchrun
        if dist is not None:  # every rank the same arguments, before any work; the record lists every rank
            dist.check_same_arguments(dataclasses.asdict(cfg), stats)
        device = dist.device if dist else resolve_device(cfg.device)
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
        stats.store = str(path)
        if dist is not None:  # distributed: rank 0 holds the lock for every rank
            with dist.store_lock(path):
                return _run_locked(cfg, net, layers, prep, source, device, path, every, stats, t0, guard, pooled,
                                   dist)
        with StoreLock(path):
            remove_stale_temps(path)
            return _run_locked(cfg, net, layers, prep, source, device, path, every, stats, t0, guard, pooled)


def _run_locked(cfg, net, layers, prep, source, device, path: Path, every, stats: JobStats, t0,  # noqa: PLR0913, C901
                guard: InterruptGuard, pooled: list[str] = (), dist=None) -> RunResult:
    ck_path = checkpoint_path(path) if dist is None else dist.checkpoint_path(path)
    ck = None
    if dist is not None:  # distributed: every rank reads every rank's checkpoint
        ck = dist.load_checkpoints(path, cfg.discard_checkpoint)
    elif distributed.rank_checkpoints(path):  # a torchrun job's, resumed by one process
        ck = distributed.load_all(path, cfg.discard_checkpoint)
    elif ck_path.exists():
        if cfg.discard_checkpoint:
            _warn(f"deleting the checkpoint {ck_path} (--discard-checkpoint)")
            ck_path.unlink()
        else:
            ck = load_checkpoint(ck_path)
    base_path = store_target(Path(cfg.update)) if cfg.update else None
    run_config = config_of_run(net, prep, cfg.k, layers, cfg.precision, pooled)
    fingerprint = {**run_config, "images": image_list_id(str(source.root), [source.relpath(p) for p in source.paths]),
                   "base": None}
    if (ck is not None and not cfg.force and path.exists() and _store_inputs_id(path) == fingerprint_id(ck.fingerprint)
            and set(differences(ck.fingerprint, fingerprint)) <= {"base"}):
        # Killed after the store was written but before the checkpoint was removed. (For an
        # in-place --update the base is that new store now, hence "base" may differ.)
        if dist is not None:
            dist.barrier()
        if dist is None or dist.rank == 0:
            distributed.remove_checkpoints(path)
        ck_path.unlink(missing_ok=True)
        stats.mode = "already-complete"
        with Store(path) as s:
            return RunResult(path, len(source.paths), int(s.attrs["images_skipped"]),
                             time.perf_counter() - t0, layers, mode=stats.mode)

    if base_path is not None and not base_path.exists():
        _warn(f"--update {base_path}: no such store yet; mining every image into a new one")
        base_path = None
    base, base_part, known = None, None, set()
    try:
        if base_path is not None:
            base = Store(base_path)
            check_compatible(config_of_store(base.attrs), str(base_path), run_config, "this run")
            base_part = part_from_store(base, layers)
            known = known_keys(base_part.table)
            fingerprint["base"] = {"path": str(base_path.resolve()),
                                   "id": base.attrs.get("inputs_id") or base.attrs.get("created")}

        state = new_state(net, layers, cfg.k, device, pooled)
        if dist is None:  # finalize: capture pixels, and switches where that is exact (mining.capture)
            state.capture = new_capture(net, layers, prep, device, cfg)
        complete = False
        if ck is not None:
            diff = differences(ck.fingerprint, fingerprint)
            if diff == ["images"]:
                was, now = ck.fingerprint["images"]["count"], fingerprint["images"]["count"]
                _warn(f"the image list changed since {ck_path} was written ({was} files then, {now} now); "
                      f"its progress cannot be reused, starting over")
                ck = None
            elif diff:
                raise CheckpointMismatch(
                    f"{ck_path} belongs to a run with a different {', '.join(diff)}; re-run that command to "
                    f"finish it, or pass --discard-checkpoint to delete it and start over")
            else:
                state.restore(ck.records, ck.tops, ck.pooled, ck.stats)
                if ck.stats is None:
                    _warn(f"{ck_path} was written before mine kept unit statistics; the store will have none "
                          f"(re-run with --force to get them)")
                state.batches = ck.batches
                complete = ck.complete
        if ck is None and path.exists() and not cfg.force and not (base_path and base_path.resolve() == path.resolve()):
            why = _store_state(path)
            if why == "complete":
                raise StoreExistsError(f"{path} already exists and is complete; pass --update {path} to add new "
                                       f"images to it, or --force to replace it")
            raise StoreExistsError(f"{path} exists but is not a usable store ({why}); pass --force to replace it")
        stats.mode = ("update" if base_part else "fresh") if ck is None else ("update-resume" if base_part else "resume")
        stats.images_resumed = len(state.records)
        stats.images_seen = len(source.paths)  # streamed from here on: a run refused above saw none
        # File metadata of what this invocation reads (this rank's share), taken before any read;
        # rows restored from a checkpoint get none (jobs.update).
        listed = list_stats(source, [i for i in range(len(source.paths)) if i not in state.records
                                     and (dist is None or dist.owns(source, i))])
        skip = unchanged(source, listed, base_part.table, base.attrs) if base_part is not None and not cfg.rehash else {}

        for attempt in (1, 2):
            for i, r in skip.items():  # --update: unchanged files are known without being read
                state.records.setdefault(i, r)
            _stream_with_checkpoints(cfg, net, state, prep, source, device, known, ck_path, fingerprint,
                                     every, complete, stats, guard, dist)
            if dist is not None:  # distributed: every rank gets the global top-k and records
                dist.combine_stream(state, stats, source, prep, net, cfg.precision)
            # The checkpoint is complete from here on: a signal stops at once (guard.graceful is off).
            guard.hint = f"the streaming pass is saved in {ck_path}; re-run the same command to finish"
            if dist is None or dist.rank == 0:
                _warn_skipped(source, state.records)
            table = images_table(source, state.records,
                                 listed if dist is None else {i: m for p in dist.gather_all(listed) for i, m in p.items()})
            stats.images_known = sum(r.reason == KNOWN for r in state.records.values())
            stats.images_skipped = sum(r.reason not in ("", KNOWN, "duplicate") for r in state.records.values())
            if base_part is not None:
                table = resolve_known_rows(table, base_part.table)
            parts = ([base_part] if base_part else []) + [fresh_part(cfg.images, source, prep, state, table)]
            if dist is not None:  # each kept image read by the rank that owns its file, sent where finalize needs it
                dist.serve_kept(parts, layers, cfg.k, net, source, prep)
            try:
                combined = combine(parts, net, layers, cfg.k, prep, device, cfg.precision, dist=dist)
                break
            except KeptImagesChanged as e:
                # The mined state describes file contents that are gone: it cannot be finalized, and
                # a resume from it never could. Drop it and mine the files as they are now.
                # (Distributed: every rank gets the error and drops its own checkpoint.)
                ck_path.unlink(missing_ok=True)
                if dist is None or dist.rank == 0:
                    distributed.remove_checkpoints(path)  # every rank's too
                if dist is not None:
                    dist.barrier()
                if attempt == 2:
                    raise SourceChanged(
                        f"{e}; they changed again while being mined: stop whatever writes to them and re-run "
                        f"(the checkpoint was deleted, the next run mines from the start)") from None
                if dist is None or dist.rank == 0:
                    _warn(f"{e}; mining all images again from the start")
                state, complete, guard.hint = new_state(net, layers, cfg.k, device, pooled), False, ""
                if dist is None:
                    state.capture = new_capture(net, layers, prep, device, cfg)
                stats.mode, stats.images_resumed = ("update" if base_part else "fresh"), 0
        if base is not None:
            base.close()  # the output may replace it
            base = None
        attrs = {
            "model": net.arch, "weights": net.weights_name, "weights_hash": net.weights_hash,
            "preprocessing": prep.to_dict(),
            "k": cfg.k, "input_size": cfg.size, "images_spec": combined.spec, "images_root": combined.root,
            "layers": layers, "versions": versions(), "precision": cfg.precision,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "images_seen": combined.images_seen, "images_skipped": combined.images_skipped,
            "seconds": time.perf_counter() - t0, "inputs_id": fingerprint_id(fingerprint),
            **({"pooled": list(pooled)} if pooled else {}),
        }
        if dist is None or dist.rank == 0:  # distributed: rank 0 writes the one store
            write_isolated(path, lambda: write_store(path, net, attrs, combined.table, combined.fin,
                                                          combined.stats),
                           f"the previous store (if any) and the checkpoint {ck_path.name} are unchanged")
            guard.hint = f"the store {path} is complete"  # not "re-run to finish" from here on
        if dist is not None:  # the others wait for the outcome
            dist.agree(None)
            guard.hint = f"the store {path} is complete"
        pause_point("store-written")
        ck_path.unlink(missing_ok=True)
        if dist is None or dist.rank == 0:
            distributed.remove_checkpoints(path)
    finally:
        if base is not None:
            base.close()
    return RunResult(path, len(source.paths), stats.images_skipped, time.perf_counter() - t0, layers,
                     stats.images_new, stats.images_known, stats.images_resumed, stats.mode)


def new_capture(net: Network, layers: list[str], prep: Preprocessing, device, cfg: RunConfig) -> Capture | None:
    """Pixels of the top-k candidates always (budget ``MINE_CAPTURE_MB``, default 2048; 0 turns
    capture off); their switches and values too when the streaming pass is float32, contiguous
    and batch-invariant, so finalize need not re-run them."""
    import os

    budget = float(os.environ.get("MINE_CAPTURE_MB", "2048"))
    if budget <= 0:
        return None
    exact = (cfg.precision == "fp32" and not (cfg.channels_last or device.type == "cuda")
             and batch_invariant(net, layers, prep, device))
    return Capture(net.pools_through(layers), exact, budget)


def fresh_part(spec: str, source, prep: Preprocessing, state: StreamState, table: dict) -> Part:
    """This pass as a ``Part``: its kept images are re-read from the source files.

    A kept content is read from the file it was mined from or, if that file has changed
    since, from a duplicate that still holds it; finalize checks what comes back against
    the key (``KeptImagesChanged`` when no file holds the content any more).
    """
    files: dict[int, list[int]] = {}  # key -> indices holding it, the mined ("ok") file first
    for i in sorted(state.records, key=lambda i: (not state.records[i].ok, i)):
        r = state.records[i]
        if r.ok or r.reason == "duplicate":
            files.setdefault(r.key, []).append(i)
    dataset = ImageDataset(source, prep)
    cap = state.capture

    def record_of(key: int) -> dict:
        px = cap.pixels(key) if cap is not None else None  # no second decode of a captured image
        if px is not None:  # the pixels mined: no check needed
            return {"ok": True, "reason": "", "pixels": torch.from_numpy(px)}
        records = (dataset[i] for i in files[key])
        first = next(records)
        return first if first["key"] == key else next((r for r in records if r["key"] == key), first)

    captured = {k: v for k, v in cap.items.items() if v[1] is not None} if cap is not None else {}
    return Part("this run", spec, str(source.root), table, state.tops, record_of, set(files),
                {n: p.as_dict() for n, p in state.pooled.items()}, state.total_stats(),
                {r.key for r in state.records.values() if r.ok}, captured)


def _stream_with_checkpoints(cfg, net, state: StreamState, prep, source, device, known, ck_path: Path,  # noqa: PLR0913
                             fingerprint: dict, every, complete: bool, stats: JobStats,
                             guard: InterruptGuard, dist=None) -> None:
    """The streaming pass over the images without a record, checkpointed; on return the
    checkpoint is complete and later signals interrupt at once (see ``pipeline.signals``)."""
    total = len(source.paths)
    todo = [i for i in range(total) if i not in state.records]

    def save(done: bool) -> None:
        save_checkpoint(ck_path, Checkpoint(fingerprint, done, state.batches, state.records,
                                            {n: t.state_dict() for n, t in state.tops.items()},
                                            {n: p.state_dict() for n, p in state.pooled.items()},
                                            state.stats_parts()))

    def stopped(sig: str) -> Interrupted:
        return Interrupted(f"interrupted by {sig}: progress saved to {ck_path} ({len(state.records)} of {total} "
                           f"images); re-run the same command to resume")

    net.to(device)  # also for finalize, when resuming from a complete checkpoint
    channels_last = cfg.channels_last or device.type == "cuda"  # faster convs on tensor cores
    if not complete:
        guard.graceful = True  # a signal now stops at the next batch boundary (or after GRACE_S)
        if channels_last:
            net.model.to(memory_format=torch.channels_last)
        meter = multiprocessing.Value("q", 0)  # bytes read, by this process and its loader workers
        bytes0 = stats.bytes_read or 0
        dataset = (SkipKnown(source, prep, todo, known, meter) if dist is None
                   else dist.dataset(source, prep, todo, known, meter))  # distributed: this rank's files only
        loader = make_loader(dataset, cfg.batch_size, cfg.workers, device.type == "cuda")
        schedule = _Schedule(every)
        saved_at = state.batches
        bar = (tqdm(total=total, initial=total - len(todo), unit="img", desc="mining",
                    disable=not cfg.progress, smoothing=0.1) if dist is None
               else dist.progress(state, total, total - len(todo), cfg.progress))

        def on_batch(n: int, bad: int) -> None:
            nonlocal saved_at
            bar.update(n)
            stats.images_new, stats.bytes_read = state.fed, bytes0 + meter.value
            pause_point("stream", until=lambda: guard.requested is not None)
            if guard.requested:
                save(False)
                saved_at = state.batches
                raise stopped(guard.requested)
            if schedule.due():
                save(False)
                saved_at = state.batches
                schedule.reset()

        try:
            with bar:
                stream(net, state, loader, prep, device, DTYPES[cfg.precision], channels_last,
                       on_batch=on_batch)
        except WriteError:  # a failed checkpoint write is not retried
            raise
        except BaseException as e:
            # Out of memory, a dead loader worker (Ctrl-C reaches them too), a signal whose batch
            # did not end in time, a bug: keep what was folded so far, then report the error.
            # (Between batches the state is consistent; ``dirty`` marks the commit in between.)
            saved = state.batches == saved_at and ck_path.exists()
            if not saved and not state.dirty and (state.batches > saved_at or guard.requested):
                try:
                    save(False)
                    saved = True
                except BaseException as e2:  # noqa: BLE001 - the first error is the one to report
                    _warn(f"could not save a checkpoint after the failure: {e2}")
            if guard.requested and saved:
                raise stopped(guard.requested) from None
            raise e
        stats.images_new = state.fed
        stats.bytes_read = bytes0 + meter.value
        save(True)
    guard.graceful = False
    if guard.requested:  # a signal arrived after the last batch
        raise stopped(guard.requested)
