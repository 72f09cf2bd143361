"""From projection values to display pixels, and from the network's channel order to RGB.

Display: a tile ``x`` becomes ``clip(x / (2 * s) + 0.5, 0, 1)``: zero is mid-grey, ``+s`` white,
``-s`` black, the sign preserved. The contrast mode chooses the scale ``s``:

* ``robust`` (default): per tile, the ``ROBUST_PERCENTILE``-th percentile of ``|x|`` over the
  tile's pixels and colours; the few values beyond it are clipped. Projections are heavy-tailed
  (a handful of pixels near the unit's centre dominate), so a scale set by the single largest
  pixel leaves most of the structure within a few grey levels of the background;
* ``max``: per tile, ``max|x|`` (nothing clipped; the 0.1 release's display);
* ``shared``: one robust scale for every tile passed in (one montage), which shows how strong the
  projections are relative to each other.

When the percentile of a sparse tile is 0 (most pixels exactly zero) its max is used instead. An
all-zero tile is uniform grey.

Channel order: projections come out in the order of the network's input channels, which is BGR
for Caffe-converted weights. :func:`to_rgb` turns them into RGB *before* anything is displayed
or saved; forgetting it swaps red and blue.
"""
from __future__ import annotations

import numpy as np

from ..data.preprocess import Preprocessing, channel_order

__all__ = ["CONTRASTS", "ROBUST_PERCENTILE", "display", "scales", "to_rgb"]

CONTRASTS = ("robust", "max", "shared")
ROBUST_PERCENTILE = 99.0


def to_rgb(tiles: np.ndarray, prep: Preprocessing | str) -> np.ndarray:
    """(N, 3, R, R) in the network's channel order -> the same in RGB order; a one-channel
    network's (N, 1, R, R) -> grey (N, 3, R, R), the channel repeated."""
    if tiles.shape[1] == 1:
        return np.ascontiguousarray(np.repeat(tiles, 3, axis=1))
    order = channel_order(prep)
    if tiles.shape[1] != 3:
        raise ValueError(f"expected 3 colour channels, got {tiles.shape[1]}")
    return np.ascontiguousarray(tiles[:, ::-1]) if order == "BGR" else tiles


def scales(tiles: np.ndarray, contrast: str = "robust", percentile: float | None = None) -> np.ndarray:
    """(N,) display scale of each of N tiles (N, ...) under a contrast mode (see the module doc)."""
    if contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}; use one of: {', '.join(CONTRASTS)}")
    q = ROBUST_PERCENTILE if percentile is None else float(percentile)
    a = np.abs(np.asarray(tiles, dtype=np.float64)).reshape(len(tiles), -1)
    if a.size == 0:
        return np.zeros(len(a))
    if contrast == "shared":
        a = a.reshape(1, -1)
    top = a.max(1)
    s = top if contrast == "max" else np.percentile(a, q, axis=1)
    s = np.where(s > 0, s, top)
    return np.broadcast_to(s, (len(tiles),)).copy()


def display(tiles: np.ndarray, contrast: str = "robust", percentile: float | None = None,
            scale: float | None = None) -> np.ndarray:
    """(N, 3, R, R) float -> (N, R, R, 3) uint8 with zero at mid-grey (see the module doc).

    ``scale``: one given scale for every tile instead of the contrast mode's (a ``shared`` scale
    computed over tiles of different sizes, which cannot be passed as one array)."""
    t = np.asarray(tiles, dtype=np.float64)
    if t.ndim != 4:
        raise ValueError(f"expected (N, 3, R, R) tiles, got shape {t.shape}")
    m = (np.full(len(t), float(scale)) if scale is not None else scales(t, contrast, percentile)).reshape(-1, 1, 1, 1)
    scaled = np.where(m > 0, t / (2 * np.where(m > 0, m, 1)), 0.0) + 0.5
    px = np.clip(np.rint(np.clip(scaled, 0.0, 1.0) * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(px.transpose(0, 2, 3, 1))
