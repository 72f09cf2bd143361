"""Union of mined parts: the one code path behind ``mine run``, ``--update`` and ``mine merge``.

A *part* is what one pass over some images knows: its images table, its per-layer
top-k state, and a way to get the uint8 network input of any image in that top-k
(a store has them in ``/kept/pixels``; a fresh pass re-reads its source files).

Why the result equals one run over the union of the images:

* top-k: per channel the k best of a union are among the k best of each part, so
  merging the parts' top-k states (``RunningTopK.merge``, which keeps an image
  seen by two parts once) gives exactly the union's top-k.
* images table: rows are (path, content key) pairs; the union drops repeated
  pairs, is sorted by path as a run sorts its files, and "ok"/"duplicate" is
  decided again by path order (the first path of each content is "ok").
* unit statistics: sums of counts, see ``unitstats`` (images shared by parts are
  subtracted again, so each counts once).
* pooled vectors: rows by content key, the union of the parts' rows.
* values, switches, pixels: ``finalize`` runs once over the union's kept images,
  in key order and fixed batches, from the same uint8 pixels a single run would
  read, so float32 values and switches are those of a single run bit for bit.
  (Copying values out of the parts would not be: a float32 convolution can round
  differently depending on which images share its batch.)

Top-k, unit statistics and pooled vectors are united alike: each layer's statistics of
the parts merged into one (the protocol of ``mining.statistic``).

Paths of parts with different roots are re-rooted at their common folder: shards
``photos/a`` and ``photos/b`` merge into paths ``a/...`` and ``b/...`` under
``photos``, as a run over ``photos`` would name them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.preprocess import Preprocessing
from ..faults import pause_point
from ..job_errors import IncompatibleError
from ..mining.finalize import Finalized, FinalizeOptions, finalize
from ..mining.peers import ALONE
from ..mining.pooled import PooledVectors
from ..mining.statistic import merge_all, merge_states
from ..mining.stats import UnitStats
from ..mining.topk import RunningTopK
from ..models.network import Network
from ..store.schema import as_str
from ..store.write import images_columns
from .unitstats import MiningSetup, union_stats

CONTENT_OK = ("ok", "duplicate")
POOLED = "pooled_"  # /images/pooled_<layer>: (N, 2, C) float16 per image, see mining.pooled
COLUMNS = ("path", "sha256", "key", "status", "width", "height")
STAT_COLUMNS = ("size", "mtime_ns", "ctime_ns")  # the file when listed (jobs.update); -1: unknown
NO_STAT = (-1, -1, -1)
LABEL = "label"  # optional column: an array/Dataset source's labels


def content_mask(status) -> np.ndarray:
    """Which rows of an images table's ``status`` column hold a content that was used ("ok" or
    "duplicate"; the store's text may come back as ``bytes``)."""
    return np.fromiter((as_str(s) in CONTENT_OK for s in status), dtype=bool, count=len(status))


@dataclass
class Part:
    """One mined part (see module docstring). ``record_of(key)`` returns a dataset record.

    ``stats``: its unit statistics (None if unknown), which count the images ``counted``.
    """

    name: str
    spec: str
    root: str
    table: dict[str, np.ndarray]
    tops: dict[str, RunningTopK]
    record_of: Callable[[int], dict]
    pixel_keys: set[int] = field(default_factory=set)  # keys ``record_of`` can serve
    pooled: dict[str, PooledVectors] = field(default_factory=dict)  # ``--pooled``: layer -> rows by key
    stats: dict[str, UnitStats] | None = None
    counted: set[int] | np.ndarray = field(default_factory=set)  # keys: a set, or unique int64 (a store's)
    captured: dict = field(default_factory=dict)  # key -> (pixels, switches) from the streaming pass


# --- configuration identity --------------------------------------------------------------

def config_of_store(attrs: dict) -> dict:
    return {"model": attrs.get("model"), "weights_hash": attrs.get("weights_hash"),
            "preprocessing": attrs.get("preprocessing"), "k": int(attrs.get("k", -1)),
            "layers": sorted(attrs.get("layers") or []), "precision": attrs.get("precision", "fp32"),
            **({"pooled": sorted(attrs["pooled"])} if attrs.get("pooled") else {})}


def config_of_run(net: Network, prep: Preprocessing, k: int, layers: list[str], precision: str,
                  pooled: list[str] = ()) -> dict:
    """The identity of a run's results (``pooled`` only when given, so older ids stay valid)."""
    return {"model": net.arch, "weights_hash": net.weights_hash,
            "preprocessing": prep.to_dict(),
            "k": int(k), "layers": sorted(layers), "precision": precision,
            **({"pooled": sorted(pooled)} if pooled else {})}


def check_compatible(ref: dict, ref_name: str, other: dict, other_name: str) -> None:
    """Refuse to combine results of different configurations, naming every difference."""
    diffs = []
    for f in ("model", "weights_hash", "preprocessing", "k", "layers", "precision", "pooled"):
        if ref.get(f) != other.get(f):
            a, b = ref.get(f), other.get(f)
            if f == "weights_hash":
                a, b = str(a)[:12], str(b)[:12]
            diffs.append(f"{f.replace('_hash', '')} ({ref_name}: {a}; {other_name}: {b})")
    if diffs:
        raise IncompatibleError(
            f"cannot combine {other_name} with {ref_name}: {'; '.join(diffs)}. A store holds one "
            f"model/weights/preprocessing/k/layers/precision; write a new store (--out) instead")


# --- parts --------------------------------------------------------------------------------

def tops_from_store(store, layers: list[str]) -> dict[str, RunningTopK]:
    return {name: RunningTopK.from_state(store.topk_state(name)) for name in layers}


def part_from_store(store, layers: list[str]) -> Part:
    """A finished store as a part; its kept pixels serve finalize (no source files needed)."""
    images = store.images()
    table = {c: (_decoded(images.pop(c), c in ("status", LABEL)) if images[c].dtype.kind in "OSU" else images.pop(c))
             for c in (*COLUMNS, LABEL, *STAT_COLUMNS) if c in images}  # each column read freed once decoded
    kept_row = {int(k): i for i, k in enumerate(store.kept_keys())}

    def record_of(key: int) -> dict:
        return {"ok": True, "reason": "", "pixels": torch.from_numpy(np.ascontiguousarray(store.pixels(kept_row[key])))}

    states = {n: store.stats_state(n) for n in layers}
    stats = None if any(v is None for v in states.values()) else {n: UnitStats.from_state(v) for n, v in states.items()}
    ok = np.fromiter((st == "ok" for st in table["status"]), dtype=bool, count=len(table["status"]))
    counted = np.unique(np.asarray(table["key"], np.int64)[ok])  # an array, not a set of every key
    return Part(str(store.path), str(store.attrs.get("images_spec")), str(store.attrs.get("images_root")),
                table, tops_from_store(store, layers), record_of, set(kept_row), pooled_from_store(store, table),
                stats, counted)


def _decoded(values: np.ndarray, repeated: bool) -> np.ndarray:
    """A text column as read (bytes) as an object array of ``str``; ``repeated`` (status, label:
    a few distinct values) shares one ``str`` per value instead of one per row."""
    if not repeated:
        return np.fromiter((as_str(v) for v in values), dtype=object, count=len(values))
    seen: dict = {}
    return np.fromiter((seen[v] if v in seen else seen.setdefault(v, as_str(v)) for v in values), dtype=object,
                       count=len(values))


def pooled_from_store(store, table: dict) -> dict[str, PooledVectors]:
    """A store's pooled vectors by image key (the rows of used contents)."""
    used = content_mask(table["status"])
    keys = np.asarray(table["key"], np.int64)[used]
    return {layer: PooledVectors.from_state({"keys": keys, "rows": store.pooled(layer)[used]}, name=layer, warn=False)
            for layer in store.attrs.get("pooled") or []}


def pooled_columns(parts: list[Part], table: dict) -> dict[str, np.ndarray]:
    """``pooled_<layer>`` (N, 2, C) float16 columns of the union's images table: each used row
    gets the vector of its content from whichever part computed it (the last part that did),
    skipped rows NaN."""
    cols = {}
    for layer in parts[0].pooled if parts else []:
        union = merge_states(PooledVectors(parts[0].pooled[layer].channels, layer, warn=False),
                             (p.pooled[layer].state() for p in reversed(parts) if layer in p.pooled))
        keys, rows = union.result()
        col = np.full((len(table["key"]), 2, rows.shape[-1] if len(keys) else 0), np.nan, np.float16)
        at, hit = _rows_of(np.asarray(keys, np.int64), np.asarray(table["key"], np.int64))
        hit &= content_mask(table["status"])
        col[hit] = rows[at[hit]]
        cols[f"{POOLED}{layer}"] = col
    return cols


def _rows_of(keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, found) of each ``wanted`` key in ``keys``: the last row holding it (as a dict built
    from the rows would say), found False where none does. Sorted arrays, no dict of the keys."""
    order = np.argsort(keys, kind="stable")
    at = np.searchsorted(keys[order], wanted, side="right") - 1
    found = at >= 0
    found[found] = keys[order[at[found]]] == wanted[found]
    return np.where(found, order[np.maximum(at, 0)] if len(keys) else 0, 0), found


# --- union --------------------------------------------------------------------------------

def _reroot(paths: np.ndarray, root: str, common: str) -> np.ndarray:
    """A part's paths (text) relative to ``common`` instead of its ``root``."""
    prefix = Path(root).relative_to(common).as_posix() if root != common else "."
    if prefix == ".":
        return _texts(paths)
    return _texts(np.fromiter((f"{prefix}/{as_str(p)}" for p in paths), dtype=object, count=len(paths)))


def _texts(values: np.ndarray) -> np.ndarray:
    """``values`` as an object array of ``str`` (itself when it is one: no copy of each string)."""
    values = np.asarray(values, dtype=object)
    if all(type(v) is str for v in values):
        return values
    return np.fromiter((as_str(v) for v in values), dtype=object, count=len(values))


def _part_column(part: Part, c: str) -> np.ndarray:
    """Column ``c`` of a part's table as the union takes it (paths apart: :func:`_reroot`): text
    as ``str``, ints as they are, file metadata -1 and label "" where the part has none."""
    t, n = part.table, len(part.table["path"])
    if c in STAT_COLUMNS:
        return np.asarray(t[c], np.int64) if all(s in t for s in STAT_COLUMNS) else np.full(n, NO_STAT[0], np.int64)
    if c == LABEL:
        return np.fromiter((as_str(v) for v in t[LABEL]), dtype=object, count=n) if LABEL in t else np.full(n, "", object)
    return _texts(t[c]) if c in ("sha256", "status") else np.asarray(t[c])


def union_table(parts: list[Part]) -> tuple[str, dict[str, np.ndarray]]:
    """(common root, images table of the union) -- see the module docstring.

    Rows are sorted by (path, key); of rows with the same (path, key) the first (in part order)
    gives the row and the last gives the file metadata (the last part's: the newest). Columns
    throughout, no tuple per row, and one column of the parts joined at a time."""
    common = os.path.commonpath([p.root for p in parts])

    def joined(c: str, rows: np.ndarray) -> np.ndarray:
        return np.concatenate([_part_column(p, c) for p in parts])[rows]

    paths = np.concatenate([_reroot(p.table["path"], p.root, common) for p in parts])
    keys = np.concatenate([np.asarray(p.table["key"], np.int64) for p in parts])
    codes = np.unique(paths, return_inverse=True)[1].reshape(-1)  # path order, as Python sorts text
    order = np.lexsort((keys, codes))  # stable: equal (path, key) rows stay in part order
    starts = np.ones(len(order), bool)
    starts[1:] = (codes[order[1:]] != codes[order[:-1]]) | (keys[order[1:]] != keys[order[:-1]])
    del codes
    ends = np.ones(len(order), bool)
    ends[:-1] = starts[1:]
    first, last = order[starts], order[ends]
    del order, starts, ends
    status = joined("status", first)
    status[content_mask(status)] = None
    label = joined(LABEL, first) if any(LABEL in p.table for p in parts) else None
    table = images_columns({
        "path": paths[first], "sha256": joined("sha256", first), "key": keys[first], "status": status,
        "width": joined("width", first), "height": joined("height", first),
        **({LABEL: label} if label is not None and any(v != "" for v in label) else {}),
        **{c: joined(c, last) for c in STAT_COLUMNS}})
    return common, table


class _KeptImages(Dataset):
    """Finalize's view of the union: item = the record of one kept table row."""

    def __init__(self, rows: list[int], table: dict, providers: dict[int, Part], size: int) -> None:
        self.rows, self.table, self.providers, self.size = list(rows), table, providers, size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        pause_point("finalize")
        r = self.rows[i]
        key = int(self.table["key"][r])
        rec = self.providers[key].record_of(key)  # a re-read file brings the key of what it holds now
        return {"index": r, "key": int(rec.get("key", key)), "sha256": rec.get("sha256", self.table["sha256"][r]),
                "ok": bool(rec["ok"]), "reason": rec["reason"], "pixels": rec["pixels"],
                "width": int(self.table["width"][r]), "height": int(self.table["height"][r])}


@dataclass
class Combined:
    root: str
    spec: str
    table: dict[str, np.ndarray]
    fin: Finalized | None
    stats: dict[str, dict] | None = None  # layer -> UnitStats.result()

    @property
    def images_seen(self) -> int:
        return len(self.table["path"])

    @property
    def images_skipped(self) -> int:
        return int(sum(not s.startswith(CONTENT_OK) for s in self.table["status"]))


def union_tops(parts: list[Part], layers: list[str], net: Network, k: int) -> dict[str, RunningTopK]:
    """Each layer's top-k of the union: the parts' top-k merged (a key in several parts kept once)."""
    return {n: merge_all(RunningTopK(net.layers[n].channels, k), (p.tops[n] for p in parts)) for n in layers}


def combine(parts: list[Part], setup: MiningSetup, dist=ALONE) -> Combined:
    """Union of ``parts`` finalized into what ``write_store`` writes (``dist``: finalize is
    split across the ranks and ``fin`` is None except on rank 0)."""
    root, table = union_table(parts)
    stats = union_stats(parts, setup, root, table)
    tops = union_tops(parts, setup.layers, setup.net, setup.k)
    key_to_index = _kept_rows(table, tops)
    providers = _providers(parts, tops)

    def describe(layer, c, rank, key):
        return f"{layer} feature {c} rank {rank} ({table['path'][key_to_index[key]]})"

    captured = {key: item for p in parts for key, item in p.captured.items()}
    fin = finalize(setup.net, tops, key_to_index,
                   lambda rows: _KeptImages(rows, table, providers, setup.prep.size),
                   FinalizeOptions(setup.prep, setup.device, setup.precision, describe=describe,
                                   name_of=lambda row: table["path"][row], dist=dist),
                   captured)
    specs = list(dict.fromkeys(p.spec for p in parts))
    return Combined(root, " + ".join(specs), {**table, **pooled_columns(parts, table)}, fin, stats)


def _kept_rows(table: dict[str, np.ndarray], tops: dict[str, RunningTopK]) -> dict[int, int]:
    """key -> the table row of its "ok" file, for the kept keys only (what finalize and its
    messages look up): a dict of the kept images, not of every file."""
    kept = np.unique(np.concatenate([t.keys.reshape(-1).cpu().numpy() for t in tops.values()] + [np.zeros(0, np.int64)]))
    kept = kept[kept >= 0]
    ok = np.flatnonzero(np.fromiter((s == "ok" for s in table["status"]), dtype=bool, count=len(table["status"])))
    keys, first = np.unique(np.asarray(table["key"], np.int64)[ok], return_index=True)  # the first "ok" row of a key
    at = np.minimum(np.searchsorted(keys, kept), max(len(keys) - 1, 0))
    found = keys[at] == kept if len(keys) else np.zeros(len(kept), bool)
    return dict(zip(kept[found].tolist(), ok[first[at[found]]].tolist()))


def _providers(parts: list[Part], tops: dict[str, RunningTopK]) -> dict[int, Part]:
    """The part that serves the pixels of each kept image key (the first that holds them)."""
    providers: dict[int, Part] = {}
    for t in tops.values():
        for key in t.keys.flatten().tolist():
            if key >= 0 and key not in providers:
                owner = next((p for p in parts if key in p.pixel_keys), None)
                if owner is None:  # cannot happen: every kept key comes from some part's top-k
                    raise RuntimeError(f"no part holds the pixels of kept image key {key}")
                providers[key] = owner
    return providers
