"""``--update``: mine only the images whose content the store does not hold yet.

Known content is recognised by its key (from the file's SHA-256), never by name,
so renamed or copied files are not mined twice and an edited file is mined anew.
Each file is still read and hashed (that is what tells new from known), but known
files are neither decoded nor run through the network: on a nightly job over a
growing collection that is most of the cost saved.

Semantics, because a top-k cannot forget: an updated store covers every image
content ever mined into it. A file deleted from the collection, or the old
content of a file edited since, stays in the images table and may stay in the
top-k. Start a fresh store (``--force``) to drop them.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..data import ImageDataset, image_key
from ..data.read import Unreadable
from ..store.schema import as_str
from .combine import CONTENT_OK

KNOWN = "known"  # reason recorded for an image skipped because the store holds it


def known_keys(table: dict[str, np.ndarray]) -> set[int]:
    """Keys of the contents a store has mined (rows "ok"/"duplicate"; not the skipped ones,
    which are tried again: the file may have been repaired or the decoder improved)."""
    return {int(k) for k, s in zip(table["key"], table["status"]) if as_str(s) in CONTENT_OK}


class SkipKnown(ImageDataset):
    """``ImageDataset`` that returns ``ok=False, reason="known"`` for known content
    without decoding it (the stream pass then neither feeds nor counts it as seen)."""

    def __init__(self, source, prep, indices=None, known: set[int] = frozenset()) -> None:
        super().__init__(source, prep, indices)
        self.known = known

    def __getitem__(self, i: int) -> dict:
        if self.known:
            index = self.indices[i]
            try:
                digest = hashlib.sha256(self.source.read(index)).hexdigest()
            except Unreadable:
                return super().__getitem__(i)  # records the unreadable file (or bad name) as usual
            key = image_key(digest)
            if key in self.known:
                s = self.prep.size
                return {"index": index, "key": key, "sha256": digest, "ok": False, "reason": KNOWN,
                        "pixels": torch.zeros((s, s, 3), dtype=torch.uint8), "width": 0, "height": 0}
        return super().__getitem__(i)


def resolve_known_rows(table: dict[str, np.ndarray], base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows of this pass that were skipped as known become content rows ("ok"; the union
    decides ok/duplicate) with the size the base store recorded for that content."""
    size = {}
    for k, s, w, h in zip(base["key"], base["status"], base["width"], base["height"]):
        if as_str(s) in CONTENT_OK:
            size.setdefault(int(k), (int(w), int(h)))
    out = {c: np.array(v, copy=True) for c, v in table.items()}
    for j, st in enumerate(out["status"]):
        if st == f"skipped: {KNOWN}":
            out["status"][j] = "ok"
            out["width"][j], out["height"][j] = size[int(out["key"][j])]
    return out
