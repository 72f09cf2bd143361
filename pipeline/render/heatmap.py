"""Activation heatmaps: where in its whole image a kept entry's unit exceeds its top-quantile level.

For an entry (layer, channel c, kept image m) the unit's map is the layer's output channel c on
image m, recomputed from the stored network input (``/kept/pixels``, normalised with the store's
preprocessing). It is upsampled to the input (bilinear, ``align_corners=False``) and the region
where it exceeds the unit's level is outlined, the rest of the image dimmed (dissect/NetDissect
style); the entry's receptive-field box is drawn on top.

The level of a unit is its ``q``-quantile (default 0.99) over the positions the unit statistics count
(a grid of at most 6 x 6 per map, ``mining.stats``) of all images seen.
:func:`unit_level` reads it from the per-unit activation histograms of the store when the store
has them; stores without them fall back to :func:`topk_level`, the quantile over the positions
of the unit's stored top-k images only (a higher level than over all images: the top-k are the
images where the unit responds most), and say so (``LEVEL_SOURCES``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..mining.stats import BINS
from ..pictures.sensitivity import BOX  # the receptive-field box, the colour occlusion maps draw it in too

__all__ = ["DEFAULT_QUANTILE", "LEVEL_SOURCES", "composite", "overlay", "overlays", "topk_level", "unit_hist",
           "unit_level", "unit_rates", "upsample"]

DEFAULT_QUANTILE = 0.99
LEVEL_SOURCES = {
    "histogram": "quantile over the counted positions (at most 6 x 6 per map) of all images seen (store histograms)",
    "top-k": "quantile over the positions of the unit's top-k images only (this store has no unit histograms)",
}
OUTLINE = (255, 230, 0)  # the level's contour
DIM = 150  # alpha of the black veil outside the region
_PALETTE = np.array([(0, 0, 0, 0), (0, 0, 0, DIM), (*OUTLINE, 255), (*BOX, 255)], np.uint8)


def unit_level(store, layer: str, q: float = DEFAULT_QUANTILE) -> np.ndarray | None:
    """(C,) q-quantile of each unit of ``layer`` over the counted positions of all images seen, from the store's
    per-unit activation histograms (``Store.levels``: ``mining.stats.quantile``, the quantile ``Store.unit_stats``
    states too); None when the store has none, or of another bins version (see :func:`topk_level`)."""
    if not 0 < q < 1:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    return store.levels(layer, q)


def unit_hist(store, layer: str, c: int) -> dict | None:
    """The unit's activation histogram from the store (``edges``, ``counts``, ``over``), or None."""
    counts = store.unit_hist(layer, c)
    if counts is None:
        return None
    return {"edges": BINS.edges.tolist(), "counts": np.asarray(counts, float).tolist(), "over": "all"}


def unit_rates(store, layer: str) -> np.ndarray | None:
    """(C,) fraction of the images counted by the statistics on which each unit fires (max > 0),
    or None without statistics (the count is /stats ``images``, which can exceed ``images_seen``
    after a merge that could not re-read shared images)."""
    st = store.stats_state(layer)
    return None if st is None else np.asarray(st["fired"], np.float64) / max(int(st["images"]), 1)


def topk_level(maps: np.ndarray, q: float = DEFAULT_QUANTILE) -> float:
    """The q-quantile (numpy's linear) over every position of a unit's maps (k, h, w) of its top-k images."""
    if not 0 < q < 1:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    return float(np.quantile(np.asarray(maps, np.float64), q)) if np.size(maps) else float("nan")


def upsample(amap: np.ndarray, size: int) -> np.ndarray:
    """(h, w) map -> (size, size), bilinear with ``align_corners=False`` (torch's ``interpolate``);
    (n, h, w) maps -> (n, size, size), one call for all (each output pixel is computed alone: the
    same values as one map at a time, and many times faster than n small calls)."""
    a = np.asarray(amap, np.float32)
    t = torch.as_tensor(a.reshape(-1, 1, *a.shape[-2:]))
    up = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    return up.reshape(*a.shape[:-2], size, size)


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` (..., H, W) within ``width`` of its outside (the contour, drawn inside the region)."""
    inner = mask
    for _ in range(width):  # erode by the 4-neighbourhood; off the picture counts as outside
        prev, inner = inner, inner.copy()
        inner[..., 0, :] = inner[..., -1, :] = inner[..., :, 0] = inner[..., :, -1] = False
        inner[..., 1:, :] &= prev[..., :-1, :]
        inner[..., :-1, :] &= prev[..., 1:, :]
        inner[..., :, 1:] &= prev[..., :, :-1]
        inner[..., :, :-1] &= prev[..., :, 1:]
    return mask & ~inner


def overlay(amap: np.ndarray, level: float, size: int, box=None) -> np.ndarray:
    """(size, size, 4) uint8 RGBA to lay over the image: the region where the upsampled map exceeds
    ``level`` clear with a contour, the rest dimmed, and the box ``[top, left, bottom, right)``."""
    boxes = None if box is None else np.asarray(box, np.int64).reshape(1, 4)
    return overlays(np.asarray(amap)[None], np.asarray([level], np.float64), size, boxes)[0]


def overlays(maps: np.ndarray, levels: np.ndarray, size: int, boxes: np.ndarray | None = None) -> np.ndarray:
    """:func:`overlay` of n maps (n, h, w) at once: levels (n,), boxes (n, 4) or None (none drawn;
    a box whose top is negative is not drawn either) -> (n, size, size, 4)."""
    up = upsample(maps, size)
    lv = np.asarray(levels, np.float64).reshape(-1, 1, 1)
    with np.errstate(over="ignore"):  # a float32 map against a Python float compares in float32 (NEP 50)
        mask = (up > lv.astype(np.float32)) & np.isfinite(lv)
    width = max(1, size // 112)
    code = (~mask).view(np.uint8)  # each pixel's colour in _PALETTE: 0 clear, 1 dimmed, 2 contour, 3 box
    code[_edge(mask, width)] = 2
    if boxes is not None:
        b = np.asarray(boxes, np.int64).reshape(-1, 4)
        r = np.arange(size)
        rows = (r >= b[:, 0:1]) & (r < b[:, 2:3])
        cols = (r >= b[:, 1:2]) & (r < b[:, 3:4])
        frame = rows[:, :, None] & cols[:, None, :] & (b[:, 0] >= 0)[:, None, None]
        code[_edge(frame, width)] = 3
    return _PALETTE.view(np.uint32)[:, 0][code].view(np.uint8).reshape(*code.shape, 4)  # a pixel's 4 bytes at once


def composite(pixels: np.ndarray, ov: np.ndarray) -> np.ndarray:
    """An (S, S, 3) uint8 image with an (S, S, 4) overlay alpha-blended on top (or n of each, (n, S, S, ...))."""
    a = ov[..., 3:4].astype(np.float32) / 255
    return np.rint(pixels.astype(np.float32) * (1 - a) + ov[..., :3].astype(np.float32) * a).astype(np.uint8)
