"""Signed sensitivity maps over images (occlusion): a signed map blended onto the picture, and boxes.

Colour: positive values (occluding here *lowers* the score: the region matters) in red,
negative ones (occluding raises it) in blue, with opacity proportional to ``|v| / max|v|``; the
picture underneath is shown at reduced contrast so the colour reads. Zero leaves the picture as
it is; an all-zero map leaves it unchanged, so "nothing matters" never looks like a result.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

POSITIVE = np.array([230, 30, 30], np.float64)
NEGATIVE = np.array([30, 80, 230], np.float64)
BOX = (0, 200, 255)  # the receptive-field box: here and on the unit pages (render.heatmap), one colour


def overlay(image: np.ndarray, values: np.ndarray, alpha: float = 0.75) -> np.ndarray:
    """(H, W, 3) uint8 picture + (H, W) signed map -> (H, W, 3) uint8."""
    if image.shape[:2] != values.shape:
        raise ValueError(f"map {values.shape} does not match the picture {image.shape[:2]}")
    v = np.asarray(values, np.float64)
    m = np.abs(v).max()
    w = (np.abs(v) / m if m > 0 else np.zeros_like(v))[..., None] * alpha
    colour = np.where((v >= 0)[..., None], POSITIVE, NEGATIVE)
    base = image.astype(np.float64) * 0.6 + 0.4 * 128
    return np.clip(np.rint(base * (1 - w) + colour * w), 0, 255).astype(np.uint8)


def draw_box(image: np.ndarray, box, colour=BOX, width: int = 2) -> np.ndarray:
    """A copy of ``image`` with the box ``[top, left, bottom, right)`` outlined (clipped)."""
    img = Image.fromarray(np.ascontiguousarray(image))
    t, l, b, r = (int(v) for v in box)
    ImageDraw.Draw(img).rectangle([l, t, max(l, r - 1), max(t, b - 1)], outline=colour, width=width)
    return np.asarray(img)
