"""From projection values to display pixels, and from the network's channel order to RGB.

Display: a tile ``x`` becomes ``x / (2 * max|x|) + 0.5`` so zero is mid-grey, the strongest
positive value white-ish and the strongest negative black-ish, with the sign preserved. By
default each tile has its own scale (``max|x|`` over that tile); ``shared=True`` uses one scale
for every tile passed in (one montage), which shows how strong the projections are relative to
each other. An all-zero tile is uniform grey.

Channel order: projections come out in the order of the network's input channels, which is BGR
for Caffe-converted weights. :func:`to_rgb` turns them into RGB *before* anything is displayed
or saved; forgetting it swaps red and blue.
"""
from __future__ import annotations

import numpy as np

from ..data.preprocess import Preprocessing, channel_order

__all__ = ["to_rgb", "display"]


def to_rgb(tiles: np.ndarray, prep: Preprocessing | str) -> np.ndarray:
    """(N, 3, R, R) in the network's channel order -> the same in RGB order."""
    mode = prep if isinstance(prep, str) else prep.mode
    order = channel_order(Preprocessing(mode))
    if tiles.shape[1] != 3:
        raise ValueError(f"expected 3 colour channels, got {tiles.shape[1]}")
    return np.ascontiguousarray(tiles[:, ::-1]) if order == "BGR" else tiles


def display(tiles: np.ndarray, shared: bool = False) -> np.ndarray:
    """(N, 3, R, R) float -> (N, R, R, 3) uint8 with zero at mid-grey."""
    t = np.asarray(tiles, dtype=np.float64)
    if t.ndim != 4:
        raise ValueError(f"expected (N, 3, R, R) tiles, got shape {t.shape}")
    if shared:
        m = np.full((len(t), 1, 1, 1), np.abs(t).max() if t.size else 0.0)
    else:
        m = np.abs(t).reshape(len(t), -1).max(1).reshape(-1, 1, 1, 1) if len(t) else np.zeros((0, 1, 1, 1))
    scaled = np.where(m > 0, t / (2 * np.where(m > 0, m, 1)), 0.0) + 0.5
    px = np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(px.transpose(0, 2, 3, 1))
