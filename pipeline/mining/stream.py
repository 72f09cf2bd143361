"""The streaming pass: images -> named-layer maxima -> running top-k per channel,
and the activations on a fixed grid -> per-unit statistics (``stats.UnitStats``).

Everything per batch stays on the model's device; the host only sees the CPU-side
bookkeeping the loader already has (keys, ok flags), so there is no per-batch
device sync. Bad files are skipped and recorded; an image whose content was
already seen (same key) is fed once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from ..data.preprocess import Preprocessing, to_device
from ..models.network import Network
from .keyset import KeySet
from .pooled import PooledVectors
from .records import ImageRecord, Records, digests
from .statistic import Statistic, merge_states
from .stats import UnitStats
from .taps import layer_stats
from .topk import RunningTopK

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # --precision of the pass


def new_contribution_id() -> str:
    """A fresh id for the statistics one process counts (see ``StreamState``)."""
    return os.urandom(8).hex()


@dataclass
class StreamState:
    """Everything a resumable pass needs: per-layer top-k, unit statistics and the records so far.

    ``stats`` counts the images this process streams; ``stats_base`` holds the
    statistics restored from checkpoints, as *contributions* by id (one per process that
    streamed, see ``jobs.checkpoint``). A contribution only grows, so checkpoints that
    overlap (per-rank files of a torchrun job, a resume with another world size) unite
    exactly: by id, keeping the snapshot with the most images. ``total_stats()`` is their
    sum. ``stats`` is None when they are unknown (restored from a checkpoint written
    before mine counted them): the pass then goes on without them.

    ``dirty`` is True only while a batch is being committed (top-k updated, records
    not yet): a checkpoint must never be taken then. ``batches`` counts folded
    batches, for checkpoint scheduling and reports.
    """

    tops: dict[str, RunningTopK]
    stats: dict[str, UnitStats] | None = None
    records: Records = field(default_factory=Records)  # by file index, as columns (``mining.records``)
    seen_keys: KeySet = field(default_factory=KeySet)  # the content keys fed so far
    dirty: bool = False
    batches: int = 0
    fed: int = 0  # images run through the network by this process (not restored)
    pooled: dict[str, PooledVectors] = field(default_factory=dict)  # ``--pooled``: one row per image content
    capture: object | None = None  # a ``mining.capture.Capture``: what finalize needs, kept as we go
    stats_base: dict[str, dict[str, dict]] = field(default_factory=dict)  # id -> layer -> UnitStats state
    stats_id: str = field(default_factory=new_contribution_id)

    def statistics(self) -> dict[str, dict[str, Statistic]]:
        """The mergeable statistics of each layer by family (``tops``, ``pooled``): what a checkpoint
        saves and resume and the torchrun gather merge. The unit statistics travel as contributions
        (``stats_parts``), which unite by id rather than merge."""
        return {"tops": self.tops, "pooled": self.pooled}

    def restore(self, records: Records | Mapping[int, ImageRecord], tops: dict[str, dict], pooled: dict | None = None,
                stats: dict[str, dict[str, dict]] | None = None) -> None:
        """Load a checkpoint into a fresh state: records (a ``Records`` is taken as it is, not copied;
        a dict of ``ImageRecord`` is converted), the ``state()`` of each layer's top-k and pooled
        vectors (merged into the fresh statistics), statistics contributions (id -> layer -> state);
        seen keys follow from the records."""
        if set(tops) != set(self.tops):
            raise ValueError(f"checkpoint layers {sorted(tops)} differ from {sorted(self.tops)}")
        saved = {"tops": tops, "pooled": pooled or {}}
        for family, layers in self.statistics().items():
            for name, sd in saved[family].items():
                merge_states(layers[name], [sd])
        if stats is None:
            self.stats = None
        else:
            self.stats_base = dict(stats)
        self.records = records if isinstance(records, Records) else Records.of(records)
        self.seen_keys = fed_keys(self.records)

    def stats_parts(self) -> dict[str, dict[str, dict]] | None:
        """What a checkpoint saves: every contribution, this process's own included."""
        if self.stats is None:
            return None
        return {**self.stats_base, self.stats_id: {n: s.state() for n, s in self.stats.items()}}

    def rebase_stats(self, parts: dict[str, dict[str, dict]] | None) -> None:
        """Take ``parts`` (every contribution, this process's own included) as the base and go
        on counting under a new id (a torchrun job after combining the ranks' statistics)."""
        if self.stats is None or parts is None:
            self.stats = None
            return
        self.stats_base = dict(parts)
        self.stats = {n: UnitStats(s.channels, s.hist.device) for n, s in self.stats.items()}
        self.stats_id = new_contribution_id()

    def total_stats(self) -> dict[str, UnitStats] | None:
        """Every contribution summed: the statistics of every image with a record."""
        if self.stats is None:
            return None
        parts = list(self.stats_parts().values())
        return {n: merge_states(UnitStats(s.channels), (part[n] for part in parts)) for n, s in self.stats.items()}


def fed_keys(records: Records) -> KeySet:
    """The keys of the records that were fed ("ok"): the seen keys a state restored from them has."""
    idx = records.indices()
    return KeySet(records.key[idx[records.ok[idx]]])


def unite_contributions(many: list[dict[str, dict[str, dict]] | None]) -> dict[str, dict[str, dict]] | None:
    """Union by id of statistics contributions (None if any is unknown): a contribution seen
    several times is one process's count at several moments, the one with most images is latest."""
    if any(m is None for m in many):
        return None
    out: dict[str, dict[str, dict]] = {}
    for parts in many:
        for cid, part in parts.items():
            if cid not in out or _images(part) > _images(out[cid]):
                out[cid] = part
    return out


def _images(part: dict[str, dict]) -> int:
    return max((int(sd["images"]) for sd in part.values()), default=0)


def new_state(net: Network, layers: list[str], k: int, device: torch.device, pooled: list[str] = ()) -> StreamState:
    return StreamState({n: RunningTopK(net.layers[n].channels, k, device) for n in layers},
                       {n: UnitStats(net.layers[n].channels, device) for n in layers},
                       pooled={n: PooledVectors(net.layers[n].channels, n) for n in pooled})


def _entering(top: RunningTopK, keys: torch.Tensor, into: dict, name: str, values: torch.Tensor) -> torch.Tensor:
    """``top.may_enter`` of a layer's maxima, kept ``into[name]`` so the top-k need not compute it again."""
    into[name] = top.may_enter(values, keys)
    return into[name]


@dataclass(frozen=True)
class PassOptions:
    """How the streaming pass runs: ``dtype`` of the forward (bfloat16/float16 under autocast),
    ``channels_last`` the memory format the caller put the network in, ``on_batch(n_images,
    n_bad)`` called after every batch (progress, checkpoints)."""

    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    on_batch: Callable[[int, int], None] | None = None


@dataclass(frozen=True)
class _Pass:
    net: Network
    prep: Preprocessing
    device: torch.device
    options: PassOptions


@dataclass
class _Forward:
    """What the forward pass of one batch found: per layer (maxima, positions) and pooled rows,
    the batch's new keys on the device, the captured switches and pixels, ``may_enter`` masks."""

    maxima: dict = field(default_factory=dict)
    vectors: dict = field(default_factory=dict)
    keys: torch.Tensor | None = None
    offsets: dict = field(default_factory=dict)
    entering: dict = field(default_factory=dict)
    pixels: torch.Tensor | None = None


def stream(net: Network, state: StreamState, batches: Iterable[dict], prep: Preprocessing, device: torch.device,
           options: PassOptions = PassOptions()) -> StreamState:
    """Fold every batch into ``state``; ``options.on_batch(n_images, n_bad)`` drives progress/checkpoints.

    ``options.dtype`` bfloat16/float16 runs the forward under autocast (the ranking error this
    causes is measured by tests/test_speed_options.py); ``options.channels_last`` is the
    memory format the caller put the network in.

    Each batch is computed first and committed to ``state`` last (top-k and statistics,
    then records and seen keys), so an exception in decoding or in the forward pass (out of
    memory, a signal) leaves ``state`` as it was after the previous batch: it can
    still be checkpointed. Only the commit itself runs with ``state.dirty`` set.

    An image's activations must not depend on the batch it is in (the statistics
    count them into bins, and a last-bit change moves a value lying on a bin edge).
    They do not, across positions and batch sizes, except that convolution
    libraries pick another kernel for a batch of exactly one image (oneDNN on CPU
    does: float32 results then differ in the last bit). So a lone image (the last
    batch, a batch of mostly known or bad files) is run paired with a copy of itself.
    """
    run = _Pass(net, prep, device, options)
    for batch in batches:
        ok, records, new_keys = _sort_out(batch, state)
        found = _forward(run, state, batch, ok) if ok.any() else _Forward()
        _commit(state, found, records, new_keys)
        if state.capture is not None and found.maxima:
            state.capture.add(batch["key"][ok], found.pixels, found.offsets, state.tops)
        if options.on_batch is not None:
            options.on_batch(len(ok), int((~batch["ok"]).sum()))
    return state


def _sort_out(batch: dict, state: StreamState) -> tuple[torch.Tensor, dict, np.ndarray]:
    """The batch's records and which of its images are fed: (ok mask, records as columns for
    ``Records.add_batch``, new keys). An image whose content was seen before (in ``state`` or
    earlier in the batch) is a "duplicate"."""
    ok = batch["ok"].clone()
    good = ok.numpy().astype(bool)
    keys = batch["key"].numpy().astype(np.int64)
    fresh = good & ~state.seen_keys.contains(keys)
    new_keys, first = np.unique(keys[fresh], return_index=True)  # a key's first fresh image is fed
    fed = np.zeros(len(keys), bool)
    fed[np.flatnonzero(fresh)[first]] = True
    dup = good & ~fed
    reasons = ["duplicate" if d else r for d, r in zip(dup.tolist(), batch["reason"])]
    ok[torch.from_numpy(dup)] = False
    sha, has = digests(batch["sha256"])
    rows = {"index": batch["index"].numpy().astype(np.int64), "key": keys, "sha": sha, "has_sha": has, "ok": fed,
            "reason": reasons, "width": batch["width"].numpy(), "height": batch["height"].numpy()}
    return ok, rows, new_keys


def _forward(run: _Pass, state: StreamState, batch: dict, ok: torch.Tensor) -> _Forward:
    """The forward pass over the batch's fed images (``ok``), never a batch of one (``stream``'s
    docstring): layer maxima, pooled rows, and the statistics' pending observation."""
    pixels = batch["pixels"] if ok.all() else batch["pixels"][ok]
    x = to_device(pixels, run.prep, run.device, run.options.channels_last)
    n = x.shape[0]
    if n == 1:
        x = torch.cat([x, x])
    found = _Forward(keys=batch["key"][ok].to(run.device, non_blocking=True), pixels=pixels)
    cap = state.capture
    found.offsets, handles = cap.hooks(run.net) if cap is not None else ({}, [])
    observe = None if state.stats is None else lambda name, out: state.stats[name].observe(out[:n])
    # positions only for maps that can enter a top-k (on CPU; see taps.spatial_max_above)
    kx = found.keys if n > 1 else found.keys.repeat(2)
    needed = {name: partial(_entering, state.tops[name], kx, found.entering, name) for name in state.tops} \
        if run.device.type == "cpu" else None
    # bf16/fp16 only rank the candidates; finalize re-runs the kept images in float32.
    dtype = run.options.dtype
    try:
        with torch.autocast(run.device.type, dtype=dtype, enabled=dtype != torch.float32):
            maxima, vectors = layer_stats(run.net, list(state.tops), list(state.pooled), x, observe, needed)
    except BaseException:
        for st in (state.stats or {}).values():
            st.discard()
        raise
    finally:
        for h in handles:
            h.remove()
    found.maxima = {name: (v[:n], p[:n]) for name, (v, p) in maxima.items()}
    found.vectors = {name: rows[:n] for name, rows in vectors.items()}
    return found


def _commit(state: StreamState, found: _Forward, records: dict, new_keys: np.ndarray) -> None:
    """Fold a computed batch into ``state``: top-k, statistics, pooled rows, then records and seen
    keys (``state.dirty`` meanwhile)."""
    state.dirty = True
    kd = found.keys
    for name, (values, pos) in found.maxima.items():
        mask = found.entering.get(name)
        state.tops[name].add(values.float(), kd, pos, None if mask is None else mask[:len(kd)])
        if state.stats is not None:
            state.stats[name].commit(values)
    for name, rows in found.vectors.items():
        state.pooled[name].add(kd, rows)
    state.records.add_batch(records)
    state.seen_keys.update(new_keys)
    state.batches += 1
    state.fed += len(new_keys)
    state.dirty = False
