"""The render manifest: which store and options produced which files, so re-runs skip them."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..store.read import Store

RENDER_VERSION = 3
MANIFEST = ".mine-render.json"


def store_key(store: Store) -> str:
    a = store.attrs
    ident = {k: a.get(k) for k in ("created", "weights_hash", "k", "input_size", "layers", "images_seen", "model")}
    ident["bytes"] = store.path.stat().st_size
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def load_manifest(out: Path, key: str, options: dict) -> dict:
    fresh = {"version": RENDER_VERSION, "store": key, "options": options, "features": {}, "layers": [], "units": {}}
    try:
        m = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return fresh
    if m.get("version") != RENDER_VERSION or m.get("store") != key or m.get("options") != options:
        return fresh
    m.setdefault("features", {})
    m.setdefault("layers", [])
    m.setdefault("units", {})
    return m


def save_manifest(out: Path, m: dict) -> None:
    tmp = out / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(m, sort_keys=True))
    os.replace(tmp, out / MANIFEST)
