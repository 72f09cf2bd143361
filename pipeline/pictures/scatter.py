"""2-D maps of a collection: thumbnails at their positions, and points coloured by category.

Coordinates are scaled into a square canvas with a margin (aspect ratio kept). Thumbnails are
placed greedily on a grid of cells of the thumbnail's size, in a seeded random order, at most one
per cell, so a crowded map stays readable and a 30 000-image map still draws a few hundred
pictures; every point is drawn as a dot underneath. Colours: a fixed palette of 12 distinct
colours, then evenly spaced hues; the legend lists each category with its count.
"""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 128), (128, 128, 0)]


def colours(n: int) -> list[tuple[int, int, int]]:
    if n <= len(PALETTE):
        return PALETTE[:n]
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / n, 0.75, 0.85)) for i in range(n)]


def to_canvas(xy: np.ndarray, size: int, margin: int) -> np.ndarray:
    """(n, 2) coordinates -> (n, 2) integer pixel positions (x right, y down) inside the margin."""
    xy = np.asarray(xy, np.float64)
    lo, hi = xy.min(0), xy.max(0)
    span = max(float((hi - lo).max()), 1e-12)
    centre = (lo + hi) / 2
    return np.rint((xy - centre) / span * (size - 2 * margin) + size / 2).astype(np.int64)


def pick_thumbnails(pos: np.ndarray, cell: int, limit: int, seed: int = 0) -> list[int]:
    """Indices of at most ``limit`` points, at most one per ``cell`` x ``cell`` square."""
    order = np.random.default_rng(seed).permutation(len(pos))
    taken, out = set(), []
    for i in order:
        c = (int(pos[i, 0]) // cell, int(pos[i, 1]) // cell)
        if c not in taken:
            taken.add(c)
            out.append(int(i))
            if len(out) >= limit:
                break
    return out


def thumbnail_map(xy: np.ndarray, thumbs: dict[int, np.ndarray], labels: list[str], size: int = 1200,
                  thumb: int = 40) -> np.ndarray:
    """White canvas, a dot per point in its category colour, ``thumbs[i]`` (t, t, 3) centred on point i
    with a frame in the same colour."""
    pos = to_canvas(xy, size, thumb)
    names = sorted(set(labels))
    col = dict(zip(names, colours(len(names))))
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for (x, y), lab in zip(pos, labels):
        d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=col[lab])
    for i, t in thumbs.items():
        x, y = pos[i]
        h = t.shape[0] // 2
        img.paste(Image.fromarray(t), (int(x - h), int(y - h)))
        d.rectangle([x - h - 1, y - h - 1, x - h + t.shape[1], y - h + t.shape[0]], outline=col[labels[i]], width=2)
    _legend(d, names, [labels.count(n) for n in names], col, 8, 8)
    return np.asarray(img)


def _legend(d: ImageDraw.ImageDraw, names, counts, col, x0: int, y0: int) -> None:
    font = ImageFont.load_default()
    for j, (name, n) in enumerate(zip(names, counts)):
        y = y0 + 16 * j
        d.rectangle([x0, y, x0 + 10, y + 10], fill=col[name])
        d.text((x0 + 16, y - 1), f"{name} ({n})"[:32], fill=(0, 0, 0), font=font)


def category_scatter(xy: np.ndarray, labels: list[str], size: int = 900, title: str = "") -> np.ndarray:
    """Points coloured by category, with a legend (category, count) on the right."""
    pos = to_canvas(xy, size, 20)
    names, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    col = dict(zip(names, colours(len(names))))
    font = ImageFont.load_default()
    legend_w = 220
    img = Image.new("RGB", (size + legend_w, max(size, 30 + 16 * len(names))), (255, 255, 255))
    d = ImageDraw.Draw(img)
    r = 4 if len(labels) < 2000 else 2
    for (x, y), lab in zip(pos, labels):
        d.ellipse([x - r, y - r, x + r, y + r], fill=col[str(lab)])
    if title:
        d.text((8, 4), title, fill=(0, 0, 0), font=font)
    _legend(d, list(names), list(counts), col, size + 8, 24)
    return np.asarray(img)
