"""Receptive-field crops: the box of a unit, clipped at the image border, padded back to R x R.

A unit (y, x) of a layer with geometry (R, S, P) sees input rows ``[y*S - P, y*S - P + R)`` and
the same columns. The box often starts before the image (negative top/left) or ends after it;
the crop keeps the part inside the image *at its place in the R x R tile* and pads the rest, on
whichever side it is. Negative starts are never passed to numpy slicing (which would wrap
around). The projection tiles of ``deconv`` use the very same R x R frame, so a projection and
its image patch line up pixel for pixel.
"""
from __future__ import annotations

import numpy as np

__all__ = ["box_origin", "pad_crop", "crop_tiles"]


def box_origin(y: int, x: int, stride: int, padding: int) -> tuple[int, int]:
    """Top-left corner (row, col) of the unclipped receptive-field box of unit (y, x)."""
    return y * stride - padding, x * stride - padding


def pad_crop(image: np.ndarray, top: int, left: int, size: int, fill=0) -> np.ndarray:
    """The ``size`` x ``size`` window of ``image`` (H, W, ...) at (top, left), ``fill`` outside."""
    h, w = image.shape[:2]
    out = np.full((size, size, *image.shape[2:]), fill, dtype=image.dtype)
    t, l = max(top, 0), max(left, 0)
    b, r = min(top + size, h), min(left + size, w)
    if b > t and r > l:
        out[t - top:b - top, l - left:r - left] = image[t:b, l:r]
    return out


def crop_tiles(images: np.ndarray, which: np.ndarray, tops: np.ndarray, lefts: np.ndarray, size: int) -> np.ndarray:
    """Crops of many boxes: ``images`` (M, H, W, C), ``which`` (N,) rows -> (N, size, size, C)."""
    out = np.zeros((len(which), size, size, *images.shape[3:]), images.dtype)
    for i, (m, t, l) in enumerate(zip(which, tops, lefts)):
        out[i] = pad_crop(images[int(m)], int(t), int(l), size)
    return out
