"""Montages: tiles in a grid with gaps, side by side pairs, and the Fig. 2 style overview.

Layout (what tests and users can rely on):

* every tile of a montage is the same T x T frame shown at :func:`display_side` pixels, at least
  ``MIN_TILE``, so a 3 x 3 montage is at least 604 px wide whatever the layer: a field of at
  most half of ``MIN_TILE`` is enlarged by a whole factor, nearest neighbour (each input pixel a
  sharp square, a stride grid visible as what it is: conv1_1's 3 px field is 201 px a tile,
  conv3_3's 40 px 200 px, conv4_3's 92 px 276 px); a larger one is resampled smoothly to
  ``MIN_TILE`` (HED conv5_3's 196 px to 200 px; doubling it would quadruple the files for
  nothing); fields of ``MIN_TILE`` and more are shown as they are. Only pictures are
  resampled: the saved arrays keep the projection's own pixels;
* a ``rows`` x ``cols`` grid (3 x 3 for k = 9) is filled row by row, best rank first; tiles are
  separated by ``GAP`` pixels of the background colour ``BACKGROUND`` and there is no outer
  border, so a grid is ``rows * T + (rows - 1) * GAP`` pixels tall for tile size T;
* empty slots (a channel with fewer than k entries) are left as background;
* a pair (projections | crops) is separated by ``PAIR_GAP`` pixels;
* layer-level pictures carry labels (the unit of each cell) in a ``LABEL_H`` pixel band above
  the cell, never over its pixels (:func:`label_rows`, :func:`overview`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..durable import write_atomically

__all__ = ["GAP", "PAIR_GAP", "BACKGROUND", "MIN_TILE", "display_side", "to_display", "grid", "side_by_side",
           "overview", "save_png", "save_jpeg", "grid_shape", "fit_height", "LABEL_H", "MIN_WIDTH", "label_band",
           "label_rows", "layer_tile"]

GAP = 2
PAIR_GAP = 8
BLOCK_GAP = 16
BACKGROUND = 255
MIN_TILE = 200
LABEL_H = 22  # caption band above a labelled cell
FONT_PX = 15
MIN_WIDTH = 600  # layer-level pictures are at least this wide


def display_side(r: int, min_tile: int | None = None) -> int:
    """Pixels an r x r tile is shown at (see the module doc): r times a whole factor when that
    factor is 2 or more, else ``min_tile`` (default ``MIN_TILE``), or r itself when not smaller."""
    m = min_tile or MIN_TILE
    r = max(r, 1)
    return r if r >= m else r * math.ceil(m / r) if 2 * r <= m else m


def to_display(tiles: np.ndarray, side: int) -> np.ndarray:
    """(N, T, T, 3) uint8 tiles at ``side`` x ``side``: nearest neighbour by a whole factor when
    ``side`` is a multiple of T (pixels stay aligned: every ``side // T``-th pixel is the tile),
    Lanczos otherwise."""
    t = tiles.shape[1]
    if side % t == 0:
        f = side // t
        return tiles if f == 1 else tiles.repeat(f, axis=1).repeat(f, axis=2)
    out = np.empty((len(tiles), side, side, 3), np.uint8)
    for i, tile in enumerate(tiles):
        out[i] = np.asarray(Image.fromarray(tile).resize((side, side), Image.Resampling.LANCZOS))
    return out


def layer_tile(cols: int) -> int:
    """The smallest tile (at least ``MIN_TILE``) that makes a grid ``cols`` tiles wide at least ``MIN_WIDTH``
    pixels: layer-level pictures stay legible whatever k is (k = 4 is a 2 x 2 grid)."""
    return max(MIN_TILE, math.ceil((MIN_WIDTH - (cols - 1) * GAP) / cols))


def grid_shape(n: int) -> tuple[int, int]:
    """Rows x cols for n slots: as square as possible, 3 x 3 for 9."""
    cols = max(1, math.ceil(math.sqrt(n)))
    return max(1, math.ceil(n / cols)), cols


def grid(tiles, rows: int, cols: int, tile: int | None = None, gap: int = GAP, bg: int = BACKGROUND) -> np.ndarray:
    """Place up to rows*cols (T, T, 3) uint8 tiles (None = empty slot) row by row."""
    tiles = list(tiles)
    if len(tiles) > rows * cols:
        raise ValueError(f"{len(tiles)} tiles do not fit a {rows} x {cols} grid")
    if tile is None:
        sizes = {t.shape[0] for t in tiles if t is not None}
        if len(sizes) != 1:
            raise ValueError("give the tile size when the tiles are missing or of different sizes")
        tile = sizes.pop()
    out = np.full((rows * tile + (rows - 1) * gap, cols * tile + (cols - 1) * gap, 3), bg, np.uint8)
    for i, t in enumerate(tiles):
        if t is None:
            continue
        if t.shape[:2] != (tile, tile):
            raise ValueError(f"tile {i} is {t.shape[:2]}, expected {(tile, tile)}")
        r, c = divmod(i, cols)
        out[r * (tile + gap):r * (tile + gap) + tile, c * (tile + gap):c * (tile + gap) + tile] = t
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = PAIR_GAP, bg: int = BACKGROUND) -> np.ndarray:
    """Two images next to each other, top-aligned, ``gap`` pixels apart."""
    h = max(left.shape[0], right.shape[0])
    out = np.full((h, left.shape[1] + gap + right.shape[1], 3), bg, np.uint8)
    out[:left.shape[0], :left.shape[1]] = left
    out[:right.shape[0], left.shape[1] + gap:] = right
    return out


def fit_height(img: np.ndarray, height: int) -> np.ndarray:
    if img.shape[0] == height:
        return img
    w = max(1, round(img.shape[1] * height / img.shape[0]))
    return np.asarray(Image.fromarray(img).resize((w, height), Image.Resampling.BOX))


def _font():
    try:
        return ImageFont.load_default(size=FONT_PX)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def label_band(text: str, width: int, height: int = LABEL_H, bg: int = BACKGROUND) -> np.ndarray:
    """A ``height`` x ``width`` band of the background colour with ``text`` in black, left-aligned."""
    img = Image.new("RGB", (max(width, 1), height), (bg, bg, bg))
    ImageDraw.Draw(img).text((2, height // 2), text, fill=(0, 0, 0), font=_font(), anchor="lm")
    return np.asarray(img)


def label_rows(img: np.ndarray, labels: list[str], cols: int, tile: int, gap: int = GAP,
               bg: int = BACKGROUND) -> np.ndarray:
    """A :func:`grid` of ``tile`` px cells with a ``LABEL_H`` band above every row, ``labels[i]`` over cell i.

    Row r's tiles then start at ``r * (LABEL_H + tile + gap) + LABEL_H``; columns do not move.
    """
    parts = []
    for r in range((img.shape[0] + gap) // (tile + gap)):
        band = np.full((LABEL_H, img.shape[1], 3), bg, np.uint8)
        for c, text in enumerate(labels[r * cols:(r + 1) * cols]):
            band[:, c * (tile + gap):c * (tile + gap) + tile] = label_band(text, tile, bg=bg)
        parts += [band, img[r * (tile + gap):(r + 1) * (tile + gap)]]
    return np.concatenate(parts)


def overview(pairs: list[np.ndarray], cols: int = 4, height: int = 200, gap: int = BLOCK_GAP,
             bg: int = BACKGROUND, labels: list[str] | None = None) -> np.ndarray:
    """Zeiler & Fergus Fig. 2 style: many feature maps, each its projections beside its patches.

    ``pairs``: one side-by-side image per feature map (see :func:`side_by_side`), resized to
    ``height`` pixels (more when the grid would be narrower than ``MIN_WIDTH``) and laid out
    ``cols`` per row, ``gap`` pixels apart; ``labels[i]``, when given, in a band above pair i.
    """
    if not pairs:
        return np.full((height, height, 3), bg, np.uint8)
    cols = min(cols, len(pairs))
    aspect = max(p.shape[1] / p.shape[0] for p in pairs)
    height = max(height, math.ceil((MIN_WIDTH - (cols - 1) * gap) / (cols * aspect)))
    blocks = [fit_height(p, height) for p in pairs]
    if labels is not None:
        blocks = [np.concatenate([label_band(t, b.shape[1], bg=bg), b]) for t, b in zip(labels, blocks, strict=True)]
    width = max(b.shape[1] for b in blocks)
    bh = blocks[0].shape[0]
    rows = math.ceil(len(blocks) / cols)
    out = np.full((rows * bh + (rows - 1) * gap, cols * width + (cols - 1) * gap, 3), bg, np.uint8)
    for i, b in enumerate(blocks):
        r, c = divmod(i, cols)
        y0, x0 = r * (bh + gap), c * (width + gap)
        out[y0:y0 + b.shape[0], x0:x0 + b.shape[1]] = b
    return out


def save_png(img: np.ndarray, path: Path) -> None:
    """Write a PNG atomically (temp file + rename): a reader never sees half an image, and a
    failed write (a full disk, a signal) leaves no ``.NAME.tmp-PID`` behind."""
    write_atomically(path, lambda tmp: Image.fromarray(img).save(tmp, format="PNG", compress_level=1))


def save_jpeg(img: np.ndarray, path: Path, quality: int = 92) -> None:
    """Write a JPEG atomically, as :func:`save_png`: a file kept because it exists is never half a file."""
    write_atomically(path, lambda tmp: Image.fromarray(img).save(tmp, format="JPEG", quality=quality))
