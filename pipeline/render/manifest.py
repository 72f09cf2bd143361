"""The render manifest (``.mine-render.json``) and the lock of a render folder.

The manifest says which store produced the folder and, per feature map and per layer-level
image set, the options that produced its files, so re-runs skip what is up to date and redo
what another render made with other options::

    {"version": 4, "store": <store key>, "options": <options of the latest render>,
     "features": {layer: {"c": {"options": {...}, "arrays": bool}}},
     "layers": {layer: {"options": {...}}},
     "units": {layer: {"c": {"level": ..., "source": ..., "hist": ...}}}}

A feature map is up to date only when its recorded options equal the current ones (and its
files exist). Entries about to be re-rendered are dropped from the manifest before their files
are overwritten, so a render stopped half-way never leaves files that the manifest attributes to
other options. Another store (or an older manifest version) starts a fresh manifest.

``OUT/.mine-render.lock`` (the store lock of ``pipeline.lock``) keeps two renders out of one folder.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..durable import write_atomically
from ..lock import StoreLock
from ..store.read import Store

RENDER_VERSION = 4  # 4: options per feature map and per layer (3: one set of options per folder)
MANIFEST = ".mine-render.json"
LOCK = ".mine-render.lock"


def render_lock(out: Path) -> StoreLock:
    """``with render_lock(out):`` -- one render per folder (``LockedError``, exit 4, if a live one holds it).

    Released on exit, on errors and (with ``pipeline.signals.InterruptGuard``) on SIGTERM; the lock of
    a killed render is stale and taken over, as for ``mine run``.
    """
    out = Path(out)
    return StoreLock(out, lock_file=out / LOCK)


def store_key(store: Store) -> str:
    a = store.attrs
    ident = {k: a.get(k) for k in ("created", "weights_hash", "k", "input_size", "layers", "images_seen", "model")}
    ident["bytes"] = store.path.stat().st_size
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def load_manifest(out: Path, key: str, options: dict) -> dict:
    """The folder's manifest for store ``key`` (fresh where there is none, or it is of another
    store or version); ``options`` (the current render's) become its top-level ``options``."""
    fresh = {"version": RENDER_VERSION, "store": key, "options": options, "features": {}, "layers": {}, "units": {}}
    try:
        m = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return fresh
    if not isinstance(m, dict) or m.get("version") != RENDER_VERSION or m.get("store") != key:
        return fresh
    for name in ("features", "layers", "units"):
        if not isinstance(m.get(name), dict):
            m[name] = {}
    m["options"] = options
    return m


def feature_record(m: dict, layer: str, c: int) -> dict:
    """What the manifest records of feature map ``c`` of ``layer`` ({} if nothing)."""
    rec = m["features"].get(layer, {}).get(str(c))
    return rec if isinstance(rec, dict) else {}


def current(rec: dict, options: dict) -> bool:
    """Whether a feature or layer record was made with ``options``."""
    return rec.get("options") == options


def forget(m: dict, layer: str, chans=(), layer_level: bool = False) -> None:
    """Drop the records of channels ``chans`` (and of the layer-level images) of ``layer``."""
    feats, units = m["features"].get(layer, {}), m["units"].get(layer, {})
    for c in chans:
        feats.pop(str(c), None)
        units.pop(str(c), None)
    if layer_level:
        m["layers"].pop(layer, None)


def save_manifest(out: Path, m: dict) -> None:
    write_atomically(out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(m, sort_keys=True)))
