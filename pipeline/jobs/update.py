"""``--update``: mine only the images whose content the store does not hold yet.

Known content is recognised by its key (from the file's SHA-256), never by name,
so renamed or copied files are not mined twice and an edited file is mined anew.
Known files are neither decoded nor run through the network.

**A file is not even read when its metadata says it is unchanged.** The store records
each file's size, mtime and ctime (ns, ``/images/size``, ``mtime_ns``, ``ctime_ns``,
taken when the file was listed, *before* it was read). A file whose path has a used row
in the base store with the same three values is known without being opened
(:func:`unchanged`); every other file is read and hashed as before; ``--rehash`` reads
every file. Why ctime too: a user or a tool (``touch -r``, ``rsync -t``, ``cp -p``, an
unpacked archive) can set mtime back to an old value after rewriting a file, but not
ctime, which the kernel sets on every write, rename into place or metadata change; the
inode number is not used (moving the collection to another disk would re-hash it all
anyway, since ctime changes too). The trade: a rewrite that leaves size, mtime and ctime
as they were is not seen; that takes a clock set back, or a file system whose
timestamps are coarser than the rewrite was quick. For the latter a row whose file changed
within a clock tick (:func:`racy`: 10 ms, 2 s on a file system with whole-second stamps)
before the base store's job started (``created`` less ``seconds``: every listing came
after) is not trusted ("racy", as git calls it) and the file is re-hashed. (The check is made
when the store is used, not when it is written, so a store's contents do not depend on
timing. For rows a ``mine merge`` brought in, the merge's start is later than their listing:
the guard is weaker there.) Rows restored from a checkpoint have no metadata (-1; it would
be this run's, not that of the read): they are re-hashed once. Array items and Datasets
have no file metadata: always read.

Semantics, because a top-k cannot forget: an updated store covers every image
content ever mined into it. A file deleted from the collection, or the old
content of a file edited since, stays in the images table and may stay in the
top-k. Start a fresh store (``--force``) to drop them.
"""
from __future__ import annotations

import hashlib
import struct
from datetime import datetime

import numpy as np
import torch

from ..data import ImageDataset, image_key
from ..data.safe_read import Unreadable
from ..mining.keyset import KeySet
from ..mining.records import Records, digests
from ..store.schema import as_str
from .combine import STAT_COLUMNS, content_mask

KNOWN = "known"  # reason recorded for an image skipped because the store holds it
RACY_NS = 10_000_000  # a file changed less than this before it was listed: its metadata is not trusted
RACY_COARSE_NS = 2_000_000_000  # the same for whole-second time stamps (ext3, HFS+, FAT: 2 s)


def racy(meta: tuple[int, int, int], now: int) -> bool:
    """Changed so shortly before ``now`` that a rewrite right after could keep every time stamp:
    within :data:`RACY_NS` (the kernel stamps files from a coarse clock, 1-10 ms a tick), or
    :data:`RACY_COARSE_NS` when the stamps are whole seconds (a coarse file system)."""
    coarse = meta[1] % 1_000_000_000 == 0 and meta[2] % 1_000_000_000 == 0
    return max(meta[1], meta[2]) >= now - (RACY_COARSE_NS if coarse else RACY_NS)


def list_stats(source, indices) -> np.ndarray:
    """(N, 3) int64 ``(size, mtime_ns, ctime_ns)`` of every file of ``source``, taken now (before any
    is read) for ``indices`` and -1 for the others."""
    out = np.full((len(source.paths), 3), -1, np.int64)
    for i in np.asarray(indices, np.int64).reshape(-1):
        out[i] = source.stat(int(i))
    return out


CHUNK = 8192  # rows turned into Python objects at a time


def _lookup(name, rows: np.ndarray, meta: np.ndarray) -> np.ndarray:
    """One byte string a (path, size, mtime_ns, ctime_ns) of ``rows`` (``name(row)`` the path, ``meta``
    one row each): the metadata as 24 big-endian bytes, then the path (never empty, no NUL: the
    string never ends in a NUL, so numpy's byte-string order and equality are exact). Made
    :data:`CHUNK` rows at a time."""
    parts = [np.array([struct.pack(">qqq", *m) + name(j).encode("utf-8", "surrogatepass")
                       for j, m in zip(rows[lo:lo + CHUNK].tolist(), meta[lo:lo + CHUNK].tolist())], dtype="S")
             for lo in range(0, len(rows), CHUNK)]
    return np.concatenate(parts) if parts else np.zeros(0, "S1")


def _trusted(base: dict[str, np.ndarray], since: int) -> tuple[np.ndarray, np.ndarray]:
    """The base rows whose file metadata can be trusted (used content, known size and mtime, not
    :func:`racy`), and every row's (size, mtime_ns, ctime_ns)."""
    meta = np.stack([np.asarray(base[c], np.int64) for c in STAT_COLUMNS], axis=1).reshape(-1, 3)
    content = content_mask(base["status"])
    rows = np.flatnonzero(content & (meta[:, 0] >= 0) & (meta[:, 1] >= 0))
    keep = np.ones(len(rows), bool)
    for lo in range(0, len(rows), CHUNK):
        keep[lo:lo + CHUNK] = [not racy(tuple(m), since) for m in meta[rows[lo:lo + CHUNK]].tolist()]
    return rows[keep], meta


def listed_since(attrs: dict) -> int | None:
    """A time (ns) before which every file of the store was listed: its job's start (``created``,
    whole seconds, less ``seconds``); None if unknown."""
    try:
        created = datetime.fromisoformat(str(attrs["created"])).timestamp()
        return int((created - float(attrs["seconds"])) * 1e9)
    except (KeyError, TypeError, ValueError):
        return None


def unchanged(source, listed: np.ndarray, base: dict[str, np.ndarray], base_attrs: dict) -> Records:
    """Records (reason "known") of the listed files (rows of ``listed`` not -1) that need not be read:
    the base store has a used row of the same path whose size, mtime and ctime are theirs (the last
    such row), and that file had not changed just before the base store's job listed it (:func:`racy`)."""
    since = listed_since(base_attrs)
    if since is None or not all(c in base for c in STAT_COLUMNS):
        return Records()  # a store written before it kept file metadata: every file is hashed once
    rows, meta = _trusted(base, since)
    have = _lookup(lambda j: as_str(base["path"][j]), rows, meta[rows])
    order = np.argsort(have, kind="stable")
    have = have[order]
    listed_rows = np.flatnonzero(listed[:, 0] >= 0)
    idx, src = [], []  # the listed files found, and their base rows
    for lo in range(0, len(listed_rows), CHUNK):
        part = listed_rows[lo:lo + CHUNK]
        want = _lookup(source.relname, part, listed[part])
        at = np.searchsorted(have, want, side="right") - 1  # the last equal row, as a dict by (path, meta) kept
        hit = at >= 0
        hit[hit] = have[at[hit]] == want[hit]
        idx.append(part[hit])
        src.append(rows[order[at[hit]]])
    idx, src = np.concatenate(idx or [np.zeros(0, np.int64)]), np.concatenate(src or [np.zeros(0, np.int64)])
    sha, has = digests(as_str(base["sha256"][j]) for j in src.tolist())
    out = Records()
    n = len(src)
    out.add_coded(idx, (np.asarray(base["key"], np.int64)[src], sha, has, np.zeros(n, bool),
                             np.full(n, out.code(KNOWN), np.int32), np.zeros(n, np.int32), np.zeros(n, np.int32)))
    return out


def known_keys(table: dict[str, np.ndarray]) -> KeySet:
    """Keys of the contents a store has mined (rows "ok"/"duplicate"; not the skipped ones,
    which are tried again: the file may have been repaired or the decoder improved)."""
    content = content_mask(table["status"])
    return KeySet(np.asarray(table["key"], np.int64).reshape(-1)[content])


class SkipKnown(ImageDataset):
    """``ImageDataset`` that returns ``ok=False, reason="known"`` for known content
    without decoding it (the stream pass then neither feeds nor counts it as seen).
    Each file is read once; ``meter`` (a ``multiprocessing.Value("q")``, shared with the
    loader's workers) counts the bytes read."""

    def __init__(self, source, prep, indices=None, known: set[int] = frozenset(), meter=None) -> None:
        super().__init__(source, prep, indices)
        self.known, self.meter = known, meter

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        try:
            data = self.source.read(index)
        except Unreadable as e:
            return self.record(index, e)  # records the unreadable file (or bad name) as usual
        if self.meter is not None:
            with self.meter.get_lock():
                self.meter.value += len(data)
        if self.known:
            digest = hashlib.sha256(data).hexdigest()
            key = image_key(digest)
            if key in self.known:
                s = self.prep.size
                return {"index": index, "key": key, "sha256": digest, "ok": False, "reason": KNOWN,
                        "pixels": torch.zeros((s, s, 3), dtype=torch.uint8), "width": 0, "height": 0}
        return self.record(index, data)


def resolve_known_rows(table: dict[str, np.ndarray], base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows of this pass that were skipped as known become content rows ("ok"; the union
    decides ok/duplicate) with the size the base store recorded for that content (its first row)."""
    content = content_mask(base["status"])
    keys, first = np.unique(np.asarray(base["key"], np.int64).reshape(-1)[content], return_index=True)
    width, height = (np.asarray(base[c]).reshape(-1)[content][first] for c in ("width", "height"))
    out = {c: np.array(v, copy=True) for c, v in table.items()}
    rows = np.flatnonzero(np.fromiter((st == f"skipped: {KNOWN}" for st in out["status"]), bool,
                                      count=len(out["status"])))
    at = np.searchsorted(keys, out["key"][rows]).clip(max=max(len(keys) - 1, 0))
    if len(rows) and not (keys[at] == out["key"][rows]).all():
        raise KeyError(int(out["key"][rows][keys[at] != out["key"][rows]][0]))
    out["status"][rows] = "ok"
    out["width"][rows], out["height"][rows] = width[at], height[at]
    return out
