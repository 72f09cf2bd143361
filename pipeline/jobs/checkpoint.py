"""Checkpoints of the streaming pass: ``STORE.ckpt``, replaced atomically.

What is saved is exactly what the pass has learnt so far, ``StreamState``, as the
``state()`` of each of its statistics (``mining.statistic``, :func:`checkpoint_of`): the
per-layer top-k state (values, keys, positions), the per-layer unit statistics
(histogram counts, zlib-packed; firing counts; images counted), one record per image already
streamed (key, sha256, ok, reason, size), plus a *fingerprint* of everything that
decides the result. Resuming restores the state and streams only the images
without a record; because checkpoints are taken between whole batches and the
remaining images are batched the same way, the resumed store equals an
uninterrupted run bit for bit (same entries, switches and pixels). The batch size,
worker count and device are not in the fingerprint: a job that died of an
out-of-memory error may resume with a smaller batch.

Fingerprint: model, weights hash, preprocessing, k, layers, streaming precision,
the image list (root, count and a hash of the relative paths) and, for
``--update``, the identity of the base store. ``runner.py`` refuses a checkpoint whose
configuration differs (someone changed the command) and starts over, with a
warning, when only the image list changed (new files arrived after a crash; the
top-k cannot forget images, so the old state is unusable but nothing is wrong).

Format: an uncompressed ``.npz`` (numpy arrays only, loaded with
``allow_pickle=False``, so a checkpoint can never execute code), written to
``.STORE.ckpt.tmp-PID``, fsynced, renamed over the previous one, folder fsynced.
A crash at any moment leaves the previous checkpoint or the new one, never a mix.
A checkpoint written before mine kept unit statistics has none (``stats`` None):
it still resumes, and the store is written without statistics. Statistics are saved
as contributions by id (one per process that streamed; ``StreamState``), so that the
per-rank checkpoints of a torchrun job, which overlap once a job was resumed, unite
exactly; a checkpoint of the first format with statistics holds one contribution.
"""
from __future__ import annotations

import hashlib
import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..durable import write_atomically
from ..job_errors import CheckpointError
from ..mining.pooled import PooledVectors
from ..mining.records import Records
from ..mining.stats import BINS_VERSION, NBINS, UnitStats
from ..mining.stream import StreamState
from ..mining.topk import RunningTopK
from .output import write_error

log = logging.getLogger(__name__)

FORMAT = "mine-checkpoint"
VERSION = 1


def checkpoint_path(store: Path) -> Path:
    return store.with_name(store.name + ".ckpt")


@dataclass
class Checkpoint:
    fingerprint: dict
    complete: bool  # the streaming pass had finished (a crash came in finalize or later)
    batches: int
    records: Records  # by file index (``mining.records``)
    tops: dict[str, dict[str, torch.Tensor]]  # layer -> RunningTopK.state()
    pooled: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # layer -> PooledVectors.state()
    stats: dict[str, dict[str, dict[str, torch.Tensor]]] | None = None  # id -> layer -> UnitStats.state()


def checkpoint_of(fingerprint: dict, complete: bool, state: StreamState) -> Checkpoint:
    """What ``state`` has learnt so far: the ``state()`` of every statistic of each layer."""
    families = {family: {n: s.state() for n, s in layers.items()} for family, layers in state.statistics().items()}
    return Checkpoint(fingerprint, complete, state.batches, state.records, families["tops"], families["pooled"],
                      state.stats_parts())


def image_list_id(root: str, relpaths: Iterable[str]) -> dict:
    """The fingerprint's image list: root, count and a hash of the relative paths (any iterable:
    no list of them is kept)."""
    h = hashlib.sha256(root.encode())
    count = 0
    for p in relpaths:
        h.update(b"\0" + p.encode())
        count += 1
    return {"root": root, "count": count, "sha256": h.hexdigest()}


def fingerprint_id(fingerprint: dict) -> str:
    """sha256 of the canonical JSON: the ``inputs_id`` a store written from it carries."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def differences(saved: dict, now: dict) -> list[str]:
    """Names of the fingerprint fields that differ ("images" for the image list)."""
    return [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]


def _records_to_arrays(records: Records | dict) -> dict[str, np.ndarray]:
    """The ``rec_*`` and ``reason_*`` arrays of a checkpoint (rows in index order; a reason only for
    the rows that have one); ``records`` may be a dict of ``ImageRecord`` too."""
    if not isinstance(records, Records):
        records = Records.of(records)
    idx = records.indices()
    codes = records.reason[idx]
    rows = np.flatnonzero(codes != 0)  # code 0 is ""
    used, at = np.unique(codes[rows], return_inverse=True)
    texts = np.array([records.reasons[c] for c in used.tolist()], dtype=str)[at] if len(rows) else np.zeros(0, "U1")
    has = records.has_sha[idx]
    return {
        "rec_index": idx.astype(np.int64),
        "rec_key": records.key[idx].astype(np.int64),
        "rec_ok": records.ok[idx].astype(bool),
        "rec_width": records.width[idx].astype(np.int64),
        "rec_height": records.height[idx].astype(np.int64),
        "rec_has_sha": has.astype(bool),
        "rec_sha": np.where(has[:, None], records.sha[idx], 0).astype(np.uint8),
        "reason_row": rows.astype(np.int64),
        "reason_text": texts,
    }


def _records_from_arrays(z) -> Records:
    index = np.asarray(z["rec_index"], np.int64)
    reasons = [""] * len(index)
    for j, text in zip(z["reason_row"].tolist(), z["reason_text"].tolist()):
        reasons[j] = text
    out = Records()
    out.add_batch({"index": index, "key": z["rec_key"], "sha": z["rec_sha"], "has_sha": z["rec_has_sha"],
                   "ok": z["rec_ok"], "reason": reasons, "width": z["rec_width"], "height": z["rec_height"]})
    return out


def _pack(hist: np.ndarray) -> np.ndarray:
    """(C, bins) int64 histogram -> zlib bytes: mostly empty bins, 20-50x smaller (26 MB raw for VGG16's 13 convs)."""
    return np.frombuffer(zlib.compress(np.ascontiguousarray(hist, "<i8").tobytes(), 1), np.uint8)


def _unpack(packed: np.ndarray) -> np.ndarray:
    return np.frombuffer(zlib.decompress(packed.tobytes()), "<i8").reshape(-1, NBINS).copy()


def _encode(prefix: str, fields: tuple[str, ...], state: dict) -> dict[str, np.ndarray]:
    """The arrays of one statistic's ``state()``: ``prefix + field``, histograms packed."""
    return {prefix + n: _pack(np.asarray(state[n])) if n == "hist" else np.asarray(state[n]) for n in fields}


def _decode(z, prefix: str, fields: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A statistic's ``state()`` from the arrays ``_encode`` wrote (copies: the file closes)."""
    return {n: torch.from_numpy(_unpack(z[prefix + n]) if n == "hist" else np.array(z[prefix + n])) for n in fields}


def save_checkpoint(path: Path, ck: Checkpoint) -> None:
    """Atomic replace of ``path``; on failure the previous checkpoint is untouched."""
    meta = {"format": FORMAT, "version": VERSION, "fingerprint": ck.fingerprint,
            "complete": ck.complete, "batches": ck.batches, "layers": list(ck.tops), "pooled": list(ck.pooled),
            "stats": ck.stats is not None, "stat_parts": list(ck.stats or {}), "bins_version": BINS_VERSION}
    arrays = {"meta": np.array(json.dumps(meta)), **_records_to_arrays(ck.records)}
    for j, layer in enumerate(ck.tops):  # each layer's top-k, then its statistics contributions
        arrays.update(_encode(f"top{j}_", RunningTopK.FIELDS, ck.tops[layer]))
        for i, part in enumerate((ck.stats or {}).values()):
            arrays.update(_encode(f"stat{i}_{j}_", UnitStats.FIELDS, part[layer]))
    for j, sd in enumerate(ck.pooled.values()):
        arrays.update(_encode(f"pooled{j}_", PooledVectors.FIELDS, sd))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    try:
        write_atomically(path, write, fsync=True, pause="checkpoint-write")
    except OSError as e:
        raise write_error(path, e, "the previous checkpoint (if any) and store are unchanged") from None


def _load_stats(z, meta: dict, path: Path) -> dict | None:
    if not meta.get("stats"):
        return None
    if meta.get("bins_version", 2) != BINS_VERSION:  # counted at other positions: adding to them would mix
        log.warning("%s holds unit statistics of bins version %s, this mine counts version %s: the store of this "
                    "run will have no statistics (mine run --force rebuilds them)", path,
                    meta.get("bins_version", "1 or 2"), BINS_VERSION)
        return None

    def part(prefix: str) -> dict:
        return {layer: _decode(z, f"{prefix}{j}_", UnitStats.FIELDS) for j, layer in enumerate(meta["layers"])}

    if "stat_parts" not in meta:  # the first format: one total
        return {"first-format": part("stat")}
    return {cid: part(f"stat{i}_") for i, cid in enumerate(meta["stat_parts"])}


def load_checkpoint(path: Path) -> Checkpoint:
    hint = f"pass --discard-checkpoint to delete {path} and start over"
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise CheckpointError(f"{path} is not a mine checkpoint of version {VERSION}; {hint}")
            records = _records_from_arrays(z)
            tops = {layer: _decode(z, f"top{j}_", RunningTopK.FIELDS) for j, layer in enumerate(meta["layers"])}
            pooled = {layer: _decode(z, f"pooled{j}_", PooledVectors.FIELDS)
                      for j, layer in enumerate(meta.get("pooled", []))}
            stats = _load_stats(z, meta, path)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any damage is one clear line
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); {hint}") from None
    return Checkpoint(meta["fingerprint"], bool(meta["complete"]), int(meta["batches"]),
                      records, tops, pooled, stats)
