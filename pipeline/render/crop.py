"""Where a unit looks: the square of a projection that holds most of its energy.

The theoretical receptive field (``models.geometry``) is the box of every pixel that *can*
reach a unit; the region that actually drives it is much smaller (Luo et al. 2016: the
effective field is a small Gaussian inside it). Cropping to the theoretical field shows the
evidence as a speck in a large frame (MobileNetV2 features.11: 90% of a projection's energy in a
square of 0.2 of the tile side). ``--crop effective`` (the default) cuts both the projection and
the image patch to the square that holds the energy instead; ``--crop rf`` keeps the field.

The rule, per feature map (its k entries shown at one scale, as in Zeiler & Fergus's montages):

* an entry's energy is the squared projection summed over colours, inside its T x T field tile;
* its side is the smallest s for which some s x s square of the tile holds at least ``SHARE``
  (90%) of the energy; the feature map's side is the largest over its entries, never below
  :func:`min_side` (1/7 of the input side, 32 px at 224 px: enough of the photo to recognise it)
  and never above T;
* each entry's square of that side is the one holding the most energy; among equal ones
  (a square larger than the energy's support), the one whose centre is nearest the energy's
  centroid, then the first in row-major order.

Boxes are in the tile's coordinates here; ``render`` adds the tile origin to get input pixels.
"""
from __future__ import annotations

import numpy as np

__all__ = ["CROPS", "MIN_FRACTION", "SHARE", "best_square", "cut", "effective_boxes", "energy", "image_boxes",
           "min_side", "side_holding", "unit_crop"]

CROPS = ("effective", "rf")
SHARE = 0.9
MIN_FRACTION = 7  # the smallest crop is 1/7 of the input side
_TIE = 1e-9  # window sums within this share of the total count as equal (float sums of the same pixels)


def energy(tiles: np.ndarray) -> np.ndarray:
    """(N, C, T, T) projections -> (N, T, T) float64 energy (squares summed over colours)."""
    t = np.asarray(tiles, np.float64)
    return (t * t).sum(1)


def _window_sums(e: np.ndarray, s: int) -> np.ndarray:
    """(T - s + 1, T - s + 1): the energy of every s x s square of a T x T map (integral image)."""
    ii = np.zeros((e.shape[0] + 1, e.shape[1] + 1))
    ii[1:, 1:] = e.cumsum(0).cumsum(1)
    return ii[s:, s:] - ii[:-s, s:] - ii[s:, :-s] + ii[:-s, :-s]


def side_holding(e: np.ndarray, share: float = SHARE) -> int:
    """Smallest s such that an s x s square of ``e`` (T, T) holds ``share`` of its energy (1 if none)."""
    total = float(e.sum())
    if total <= 0:
        return 1
    need = share * total * (1 - _TIE)
    lo, hi = 1, e.shape[0]  # the whole map holds everything: hi always qualifies
    while lo < hi:  # the best square's energy grows with s, so bisect
        mid = (lo + hi) // 2
        if _window_sums(e, mid).max() >= need:
            hi = mid
        else:
            lo = mid + 1
    return lo


def best_square(e: np.ndarray, s: int) -> tuple[int, int]:
    """(top, left) of the s x s square of ``e`` that holds the most energy (ties: see the module doc)."""
    w = _window_sums(e, s)
    total = float(e.sum())
    if total <= 0:
        c = (e.shape[0] - s) // 2
        return c, c
    cand = np.argwhere(w >= w.max() - _TIE * total)
    if len(cand) > 1:
        ys, xs = np.indices(e.shape)
        cy, cx = (e * ys).sum() / total, (e * xs).sum() / total
        d = (cand[:, 0] + (s - 1) / 2 - cy) ** 2 + (cand[:, 1] + (s - 1) / 2 - cx) ** 2
        cand = cand[d <= d.min() + 1e-9]
    return int(cand[0, 0]), int(cand[0, 1])


def min_side(size: int) -> int:
    """The smallest effective crop for a ``size`` px input: 1/7 of it, at least 4 px (32 at 224, 4 at 28)."""
    return max(4, -(-int(size) // MIN_FRACTION))


def effective_boxes(tiles: np.ndarray, smallest: int, share: float = SHARE) -> tuple[int, np.ndarray]:
    """Side and (N, 2) (top, left) squares of N projections (N, C, T, T) of one feature map."""
    e = energy(tiles)
    t = e.shape[-1]
    side = max([side_holding(m, share) for m in e] + [min(t, smallest)])
    return side, np.array([best_square(m, side) for m in e], np.int64).reshape(-1, 2)


def cut(tiles: np.ndarray, patches: np.ndarray, side: int, corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``side`` x ``side`` squares at ``corners`` (N, 2) of projections (N, C, T, T) and patches (N, T, T, 3)."""
    n = len(tiles)
    t = np.zeros((n, tiles.shape[1], side, side), tiles.dtype)
    p = np.zeros((n, side, side, patches.shape[-1]), patches.dtype)
    for i, (y, x) in enumerate(np.asarray(corners, np.int64).reshape(-1, 2)):
        t[i] = tiles[i, :, y:y + side, x:x + side]
        p[i] = patches[i, y:y + side, x:x + side]
    return t, p


def unit_crop(tiles: np.ndarray, patches: np.ndarray, filled: np.ndarray, crop: str, size: int):
    """One feature map's tiles and patches (k slots, ``filled`` the used ones; ``size`` px input) cut as ``crop`` says.

    Returns the cut tiles, patches, their side and the (k, 2) corners inside the field tile
    (zeros for empty slots; the whole tile for ``rf``).
    """
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; use one of: {', '.join(CROPS)}")
    k, t = len(tiles), tiles.shape[-1]
    corners = np.zeros((k, 2), np.int64)
    if crop == "rf" or not filled.any():
        return tiles, patches, t, corners
    side, corners[filled] = effective_boxes(tiles[filled], min_side(size))
    return (*cut(tiles, patches, side, corners), side, corners)


def image_boxes(tops, lefts, side: int, size: int, filled: np.ndarray) -> np.ndarray:
    """(k, 4) int32 boxes ``[top, left, bottom, right)`` of squares in a ``size`` image, clipped; -1 where empty."""
    tops, lefts = np.asarray(tops, np.int64), np.asarray(lefts, np.int64)
    b = np.stack([np.maximum(tops, 0), np.maximum(lefts, 0), np.minimum(tops + side, size),
                  np.minimum(lefts + side, size)], -1).astype(np.int32)
    return np.where(np.asarray(filled)[:, None], b, -1)
