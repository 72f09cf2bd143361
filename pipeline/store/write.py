"""Write a finished store atomically: temp file in the same folder, fsync, rename.

A reader therefore sees either the previous file or the complete new one, never a
half-written store; ``status`` is set to complete only inside the temp file that
becomes the store. Numeric datasets that are not compressed carry HDF5's fletcher32
checksum (compressed ones have zlib's), so a flipped bit is an error when read
(``validate``), not a wrong value.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np

from ..durable import write_atomically
from ..mining import stats as unit_stats
from ..mining.finalize import Finalized
from ..models.geometry import step_of
from ..models.network import Network
from .schema import COMPLETE, EMBED, FORMAT, SCHEMA_VERSION

STR = h5py.string_dtype()
CHECKED = {"fletcher32": True}  # numeric datasets stored uncompressed: a flipped bit fails the read


def write_store(path: Path, net: Network, attrs: dict, images: dict[str, np.ndarray], fin: Finalized,
                stats: dict[str, dict] | None = None) -> Path:
    """``images``: columns path/sha256/key/status/width/height[/label] over every file of the source;
    ``stats``: layer -> ``UnitStats.result()`` (None: the store has no unit statistics)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"format": FORMAT, "schema_version": SCHEMA_VERSION})
            for k, v in attrs.items():
                f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
            status = images["status"]
            f.attrs["images_duplicate"] = int(sum(s == "duplicate" for s in status))  # `mine info` reads no rows
            g = f.create_group("images")
            for col, arr in images.items():
                _write_column(g, col, arr)
            kept = f.create_group("kept")
            kept.create_dataset("image", data=fin.kept_index, **CHECKED)  # source index == /images row
            kept.create_dataset("key", data=fin.kept_keys, **CHECKED)
            size = fin.pixels.shape[1]
            kept.create_dataset("pixels", data=fin.pixels, chunks=(1, size, size, 3) if len(fin.pixels) else None,
                                compression="gzip", compression_opts=4)
            sw = f.create_group("switches")
            for pool, arr in fin.switches.items():
                d = sw.create_dataset(pool, data=arr, chunks=(1, *arr.shape[1:]) if len(arr) else None,
                                      compression="gzip", compression_opts=4, shuffle=False)
                st = step_of(net.module(pool))
                d.attrs.update(kernel=st.kernel, stride=st.stride, padding=st.padding, dilation=st.dilation)
            lg = f.create_group("layers")
            for name, e in fin.layers.items():
                li = net.layers[name]
                g = lg.create_group(name)
                g.attrs.update(module=li.module, kind=li.kind, channels=li.channels, out_size=li.out_size,
                               **li.geometry.attrs())
                g.create_dataset("value", data=e.values, **CHECKED)
                g.create_dataset("kept", data=e.kept, **CHECKED)
                g.create_dataset("key", data=e.keys, **CHECKED)
                g.create_dataset("y", data=e.y, **CHECKED)
                g.create_dataset("x", data=e.x, **CHECKED)
                g.create_dataset("box", data=li.geometry.boxes(e.y, e.x, size), **CHECKED)
            if stats is not None:
                _write_stats(f, stats)
            f.attrs["status"] = COMPLETE
    write_atomically(path, write, fsync=True)
    return path


#: Rows per chunk of the /images columns (at most ~1 MiB a chunk): a reader of a few rows
#: (``mine top``'s kept paths) decompresses a few chunks, never the whole table.
IMAGE_CHUNK = 16384


def _write_column(g: h5py.Group, col: str, arr: np.ndarray) -> None:
    """One /images column, chunked by :data:`IMAGE_CHUNK` rows. Numbers are compressed (gzip
    with the byte shuffle: keys and times compress to about half, widths, heights and sizes
    far more) and checksummed; variable-length strings are chunked only (HDF5 compresses
    just their heap references, which does not pay)."""
    rows = min(len(arr), IMAGE_CHUNK, max(1, 2**20 // max(1, arr[:1].nbytes)))  # pooled rows: ~1 MiB a chunk
    chunks = (rows, *arr.shape[1:]) if len(arr) else None
    if arr.dtype == object:
        g.create_dataset(col, data=arr, dtype=STR, chunks=chunks)
    else:
        g.create_dataset(col, data=arr, chunks=chunks, **({"compression": "gzip", "compression_opts": 4,
                                                           "shuffle": True} if chunks else {}), **CHECKED)


def _write_stats(f: h5py.File, stats: dict[str, dict]) -> None:
    images = {int(r["images"]) for r in stats.values()}
    if len(images) != 1:  # every layer sees the same images
        raise ValueError(f"unit statistics of different image counts per layer: {sorted(images)}")
    g = f.create_group("stats")
    g.attrs.update(images=images.pop(), bins_version=unit_stats.BINS_VERSION, per_octave=unit_stats.PER_OCTAVE,
                   min_exp=unit_stats.MIN_EXP, max_exp=unit_stats.MAX_EXP, grid=unit_stats.GRID)
    for name, r in stats.items():
        lg = f["layers"][name]
        h = lg.create_dataset("hist", data=np.asarray(r["hist"], np.int64), compression="gzip", compression_opts=4,
                              shuffle=True)
        h.attrs["edges"] = unit_stats.BINS.edges
        lg.create_dataset("fires", data=np.asarray(r["fired"], np.int64), **CHECKED)


def images_columns(cols: dict) -> dict[str, np.ndarray]:
    """The /images columns from columns in path order: ``path``, ``sha256`` (text), ``key``,
    ``status``, ``width``, ``height``, optionally ``label`` (text, "" for none; the column is
    written as given) and ``size``, ``mtime_ns``, ``ctime_ns`` (the file as listed, -1 where
    unknown; all -1 when not given). No row tuple is made: a table of millions of files costs its
    columns only; an object column given as a 1-d array becomes the table's (not copied).

    ``status`` None marks a file whose content was used; among such files with equal
    content the first path is "ok" and the rest "duplicate", whatever order they were
    mined in, so fresh runs, updates and merges label duplicates alike.
    """
    key = np.asarray(cols["key"], dtype=np.int64).reshape(-1)
    n = len(key)
    status = np.empty(n, dtype=object)
    status[:] = list(cols["status"]) if not isinstance(cols["status"], np.ndarray) else cols["status"]
    used = np.flatnonzero(np.fromiter((s is None for s in status), dtype=bool, count=n))
    status[used] = "duplicate"
    status[used[np.unique(key[used], return_index=True)[1]]] = "ok"  # the first (a stable sort) of each content
    none = np.full(n, -1, dtype=np.int64)
    return {
        "path": _objects(cols["path"], n),
        "sha256": _objects(cols["sha256"], n),
        "key": key,
        "status": status,
        "width": np.asarray(cols["width"], dtype=np.int32).reshape(-1),
        "height": np.asarray(cols["height"], dtype=np.int32).reshape(-1),
        **({"label": _objects(cols["label"], n)} if "label" in cols else {}),
        **{c: np.asarray(cols[c], dtype=np.int64).reshape(-1) if c in cols else none.copy()
           for c in ("size", "mtime_ns", "ctime_ns")},
    }


def _objects(values, n: int) -> np.ndarray:
    """``values`` as a 1-d object array of ``n``: an object array given is used as it is (the
    table then holds it), anything else is copied into one."""
    if isinstance(values, np.ndarray) and values.dtype == object and values.shape == (n,):
        return values
    out = np.empty(n, dtype=object)
    out[:] = values if isinstance(values, np.ndarray) else list(values)
    return out


def write_embedding(path: Path, layer: str, coords: np.ndarray, attrs: dict) -> None:
    """``/embed/<layer>`` = ``coords`` (N, 2) float32 per /images row (``mine embed``), with ``attrs`` (dicts
    and lists as JSON), written to a copy of the store that replaces it atomically; an earlier
    ``/embed/<layer>`` is replaced, everything else copied as it is."""
    path = Path(path)

    def write(tmp: Path) -> None:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            g = f.require_group(EMBED)
            if layer in g:
                del g[layer]
            d = g.create_dataset(layer, data=coords)
            d.attrs.update({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in attrs.items()})
    write_atomically(path, write, fsync=True)
