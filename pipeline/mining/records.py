"""The streaming pass's per-image records as compact numpy columns.

A run keeps one record per file of the collection (``ImageRecord``: key, sha256, ok, reason,
size). As Python objects (a dataclass, a dict entry, a 64-character hex string) that is
~0.6 KB a file, 6 GB at 10 M files. Here they are columns indexed by file index, ~60 bytes a file:

* :class:`Records`: present mask, key int64, the digest as 32 raw bytes, ok, reason as a code
  into a table of the distinct reason strings, width/height int32, and the order the records
  were added (what ``reversed(dict.values())`` gave: :meth:`Records.newest`). It keeps the
  dict API the call sites use (``i in records``, ``records[i]`` -> ``ImageRecord``,
  ``records[i] = r``, ``setdefault``, ``len``, iteration in index order, ``values()``) and adds
  vectorised ones (:meth:`Records.add_batch`, :meth:`Records.columns`, :meth:`Records.count_reason`).

The set of content keys a run has fed is a :class:`~pipeline.mining.keyset.KeySet`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import numpy as np


@dataclass
class ImageRecord:
    """What the images table keeps for one file: provenance and whether it was used."""

    index: int
    key: int
    sha256: str
    ok: bool
    reason: str
    width: int
    height: int


def digests(hexes: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32) uint8 raw digests and (n,) bool "has one" of hex sha256 strings ("" for none)."""
    hexes = list(hexes)
    has = np.fromiter((bool(h) for h in hexes), bool, count=len(hexes))
    raw = np.zeros((len(hexes), 32), np.uint8)
    for lo in range(0, len(hexes), 8192):  # one joined string of 8192 digests at a time
        part = [h for h in hexes[lo:lo + 8192] if h]
        if part:
            raw[lo:lo + 8192][has[lo:lo + 8192]] = np.frombuffer(bytes.fromhex("".join(part)), np.uint8).reshape(-1, 32)
    return raw, has


def hex_digests(raw: np.ndarray, has: np.ndarray) -> list[str]:
    """The hex strings of :func:`digests`' output ("" where there is none)."""
    return [r.tobytes().hex() if h else "" for r, h in zip(raw, has.tolist())]


class Records:
    """``ImageRecord`` by file index, as columns (see the module docstring)."""

    COLUMNS = ("present", "key", "sha", "has_sha", "ok", "reason", "width", "height")

    def __init__(self) -> None:
        self._cap = 0
        self.present = np.zeros(0, bool)
        self.key = np.zeros(0, np.int64)
        self.sha = np.zeros((0, 32), np.uint8)
        self.has_sha = np.zeros(0, bool)
        self.ok = np.zeros(0, bool)
        self.reason = np.zeros(0, np.int32)
        self.width = np.zeros(0, np.int32)
        self.height = np.zeros(0, np.int32)
        self._order = np.zeros(0, np.int64)  # file indices in the order their records were added
        self._n = 0
        self.reasons: list[str] = [""]  # code -> reason text
        self._codes: dict[str, int] = {"": 0}

    # --- storage -------------------------------------------------------------------------------
    def _grow(self, size: int, exact: bool = False) -> None:
        """Room for indices below ``size`` (capacity doubles unless ``exact``: amortised O(1) a record)."""
        if size <= self._cap:
            return
        cap = size if exact else max(size, 2 * self._cap, 1024)
        for name in self.COLUMNS:
            old = getattr(self, name)
            new = np.zeros((cap, *old.shape[1:]), old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)
        self._cap = cap

    def reserve(self, n: int) -> None:
        """Room for the records of indices below ``n`` at once (a run knows its file count: no doubling)."""
        self._grow(n, exact=True)
        if n > len(self._order):
            self._order = np.concatenate([self._order[:self._n], np.zeros(n - self._n, np.int64)])

    def _grow_order(self, size: int) -> None:
        if size > len(self._order):
            new = np.zeros(max(size, 2 * len(self._order), 1024), np.int64)
            new[:self._n] = self._order[:self._n]
            self._order = new

    def code(self, reason: str) -> int:
        """The code of ``reason`` (added to the table when new)."""
        c = self._codes.get(reason)
        if c is None:
            c = self._codes[reason] = len(self.reasons)
            self.reasons.append(reason)
        return c

    def code_of(self, reason: str) -> int:
        """The code of ``reason``, -1 when no record ever had it (matches no row)."""
        return self._codes.get(reason, -1)

    # --- vectorised ------------------------------------------------------------------------------
    def add_batch(self, rows: dict, overwrite: bool = True) -> None:
        """Set the records of ``rows["index"]`` (distinct file indices) from columns ``key``, ``sha``
        ((n, 32) uint8), ``has_sha``, ``ok``, ``reason`` (one str a row), ``width``, ``height``.
        ``overwrite`` False keeps records already there (``dict.setdefault``)."""
        codes = np.array([self.code(r) for r in rows["reason"]], np.int32)
        cols = tuple(rows[c] for c in ("key", "sha", "has_sha", "ok")) + (codes, rows["width"], rows["height"])
        self.add_coded(np.asarray(rows["index"], np.int64), cols, overwrite)

    def add_coded(self, index: np.ndarray, cols: tuple, overwrite: bool = True) -> None:
        """``add_batch`` with reasons as codes of this table: ``cols`` is (key, sha, has_sha, ok, codes,
        width, height)."""
        if not len(index):
            return
        self._grow(int(index.max()) + 1)
        new = ~self.present[index]
        if not overwrite:
            index, cols = index[new], tuple(np.asarray(c)[new] for c in cols)
            new = np.ones(len(index), bool)
        for name, values in zip(self.COLUMNS[1:], cols):
            getattr(self, name)[index] = values
        self.present[index] = True
        added = index[new]
        self._grow_order(self._n + len(added))
        self._order[self._n:self._n + len(added)] = added
        self._n += len(added)

    def merge_from(self, other: "Records", exclude: str | None = None) -> None:
        """``self.setdefault(i, r)`` for every record of ``other`` in index order (but those whose reason
        is ``exclude``)."""
        idx = other.indices()
        if exclude is not None:
            idx = idx[other.reason[idx] != other.code_of(exclude)]
        remap = np.array([self.code(r) for r in other.reasons], np.int32)
        cols = (other.key[idx], other.sha[idx], other.has_sha[idx], other.ok[idx], remap[other.reason[idx]],
                other.width[idx], other.height[idx])
        self.add_coded(idx, cols, overwrite=False)

    def set_reason(self, index, ok: bool, reason: str) -> None:
        """``ok`` and ``reason`` of the existing records ``index``."""
        index = np.asarray(index, np.int64)
        self.ok[index] = ok
        self.reason[index] = self.code(reason)

    def indices(self) -> np.ndarray:
        """The file indices with a record, ascending."""
        return np.flatnonzero(self.present[:self._cap])

    def missing(self, n: int) -> np.ndarray:
        """The indices below ``n`` without a record, ascending."""
        have = np.zeros(n, bool)
        m = min(n, self._cap)
        have[:m] = self.present[:m]
        return np.flatnonzero(~have)

    def newest(self, n: int) -> np.ndarray:
        """The indices of the last ``n`` records added, newest first (``reversed(dict)``)."""
        return self._order[max(0, self._n - n):self._n][::-1]

    def count_reason(self, *reasons: str, among: np.ndarray | None = None) -> int:
        """How many records (of ``among``, default all) have one of ``reasons``."""
        idx = self.indices() if among is None else among
        return int(np.isin(self.reason[idx], [self.code_of(r) for r in reasons]).sum())

    def reason_mask(self, idx: np.ndarray, *reasons: str) -> np.ndarray:
        """Whether each record of ``idx`` has one of ``reasons``."""
        return np.isin(self.reason[idx], [self.code_of(r) for r in reasons])

    def hexes(self, idx: np.ndarray) -> list[str]:
        """The sha256 hex strings of the records ``idx`` ("" where none)."""
        return hex_digests(self.sha[idx], self.has_sha[idx])

    def subset(self, idx: np.ndarray) -> "Records":
        """The records of ``idx`` (ascending) as a new table."""
        out = Records()
        out.reasons, out._codes = list(self.reasons), dict(self._codes)
        out.add_coded(np.asarray(idx, np.int64), (self.key[idx], self.sha[idx], self.has_sha[idx], self.ok[idx],
                                                  self.reason[idx], self.width[idx], self.height[idx]))
        return out

    def copy(self) -> "Records":
        out = self.subset(np.zeros(0, np.int64))
        for name in (*self.COLUMNS, "_order"):
            setattr(out, name, getattr(self, name).copy())
        out._cap, out._n = self._cap, self._n
        return out

    @classmethod
    def of(cls, records: "Records | Mapping[int, ImageRecord]") -> "Records":
        """A copy of ``records`` (a ``Records`` or a dict of ``ImageRecord``, in its order)."""
        if isinstance(records, Records):
            return records.copy()
        out = cls()
        for i, r in records.items():
            out[i] = r
        return out

    # --- the dict API ------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def __contains__(self, i) -> bool:
        return 0 <= int(i) < self._cap and bool(self.present[int(i)])

    def __getitem__(self, i: int) -> ImageRecord:
        if i not in self:
            raise KeyError(i)
        i = int(i)
        return ImageRecord(i, int(self.key[i]), self.sha[i].tobytes().hex() if self.has_sha[i] else "",
                           bool(self.ok[i]), self.reasons[int(self.reason[i])], int(self.width[i]),
                           int(self.height[i]))

    def get(self, i: int, default=None):
        return self[i] if i in self else default

    def __setitem__(self, i: int, r: ImageRecord) -> None:
        sha, has = digests([r.sha256])
        self.add_batch({"index": [i], "key": [r.key], "sha": sha, "has_sha": has, "ok": [r.ok], "reason": [r.reason],
                        "width": [r.width], "height": [r.height]})

    def setdefault(self, i: int, r: ImageRecord) -> ImageRecord:
        if i not in self:
            self[i] = r
        return self[i]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def keys(self) -> Iterator[int]:
        return iter(self)

    def values(self) -> Iterator[ImageRecord]:
        return (self[i] for i in self)

    def items(self) -> Iterator[tuple[int, ImageRecord]]:
        return ((i, self[i]) for i in self)
