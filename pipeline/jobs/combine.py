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
from ..store.write import images_table
from .unitstats import MiningSetup, union_stats

CONTENT_OK = ("ok", "duplicate")
POOLED = "pooled_"  # /images/pooled_<layer>: (N, 2, C) float16 per image, see mining.pooled
COLUMNS = ("path", "sha256", "key", "status", "width", "height")
STAT_COLUMNS = ("size", "mtime_ns", "ctime_ns")  # the file when listed (jobs.update); -1: unknown
NO_STAT = (-1, -1, -1)
LABEL = "label"  # optional column: an array/Dataset source's labels


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
    counted: set[int] = field(default_factory=set)
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
    table = {c: (np.array([as_str(v) for v in images[c]], dtype=object) if images[c].dtype.kind in "OSU"
                 else images[c]) for c in (*COLUMNS, LABEL, *STAT_COLUMNS) if c in images}
    kept_row = {int(k): i for i, k in enumerate(store.kept_keys())}

    def record_of(key: int) -> dict:
        return {"ok": True, "reason": "", "pixels": torch.from_numpy(np.ascontiguousarray(store.pixels(kept_row[key])))}

    states = {n: store.stats_state(n) for n in layers}
    stats = None if any(v is None for v in states.values()) else {n: UnitStats.from_state(v) for n, v in states.items()}
    counted = {int(k) for k, st in zip(table["key"], table["status"]) if st == "ok"}
    return Part(str(store.path), str(store.attrs.get("images_spec")), str(store.attrs.get("images_root")),
                table, tops_from_store(store, layers), record_of, set(kept_row), pooled_from_store(store, table),
                stats, counted)


def pooled_from_store(store, table: dict) -> dict[str, PooledVectors]:
    """A store's pooled vectors by image key (the rows of used contents)."""
    used = np.array([as_str(s) in CONTENT_OK for s in table["status"]], bool)
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
        by_key = dict(zip(keys.tolist(), rows))
        col = np.full((len(table["key"]), 2, rows.shape[-1] if len(keys) else 0), np.nan, np.float16)
        for j, (k, s) in enumerate(zip(table["key"], table["status"])):
            if as_str(s) in CONTENT_OK and int(k) in by_key:
                col[j] = by_key[int(k)]
        cols[f"{POOLED}{layer}"] = col
    return cols


# --- union --------------------------------------------------------------------------------

def _reroot(path: str, root: str, common: str) -> str:
    if root == common:
        return path
    prefix = Path(root).relative_to(common).as_posix()
    return f"{prefix}/{path}" if prefix != "." else path


def union_table(parts: list[Part]) -> tuple[str, dict[str, np.ndarray]]:
    """(common root, images table of the union) -- see the module docstring."""
    common = os.path.commonpath([p.root for p in parts])
    rows: dict[tuple[str, int], tuple] = {}
    meta: dict[tuple[str, int], tuple[int, int, int]] = {}  # the last part's file metadata wins (the newest)
    for part in parts:
        t = part.table
        has_meta = all(c in t for c in STAT_COLUMNS)
        for j in range(len(t["path"])):
            ident = (_reroot(as_str(t["path"][j]), part.root, common), int(t["key"][j]))
            if ident not in rows:
                label = as_str(t[LABEL][j]) if LABEL in t else None
                rows[ident] = (as_str(t["sha256"][j]), as_str(t["status"][j]), int(t["width"][j]), int(t["height"][j]),
                               label or None)
            meta[ident] = tuple(int(t[c][j]) for c in STAT_COLUMNS) if has_meta else NO_STAT
    table = images_table([(path, sha, key, None if st in CONTENT_OK else st, w, h, label, meta[(path, key)])
                          for (path, key), (sha, st, w, h, label) in sorted(rows.items())])
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
    key_to_index: dict[int, int] = {}
    for i, st in enumerate(table["status"]):
        if st == "ok":
            key_to_index.setdefault(int(table["key"][i]), i)
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
