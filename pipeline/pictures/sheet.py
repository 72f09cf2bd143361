"""Comparison sheets: a grid of equal-sized pictures with column (and row) captions.

Used by the per-image analyses (reconstructions: rows images, columns layers; occlusion: rows
images, columns picture / map). Captions are drawn with PIL's built-in bitmap font, so no font
file is needed offline; long captions are cut to the cell width.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .montage import BACKGROUND

GAP = 4
CAPTION = 14  # caption band height in pixels


def _font():
    return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-1]
    return text


def labelled_grid(cells: list[list[np.ndarray]], cols: list[str] | None = None, rows: list[str] | None = None,
                  gap: int = GAP, bg: int = BACKGROUND) -> np.ndarray:
    """``cells[r][c]``: (H, W, 3) uint8, all the same size -> one (h, w, 3) uint8 sheet.

    ``cols``: a caption above each column; ``rows``: a caption above each row's first cell
    (image names), drawn in the row's own caption band.
    """
    if not cells or not cells[0]:
        raise ValueError("an empty sheet")
    h, w = cells[0][0].shape[:2]
    n_rows, n_cols = len(cells), max(len(r) for r in cells)
    head = CAPTION if cols else 0
    band = CAPTION if rows else 0
    height = head + n_rows * (band + h) + (n_rows - 1) * gap
    width = n_cols * w + (n_cols - 1) * gap
    img = Image.new("RGB", (width, height), (bg, bg, bg))
    draw, font = ImageDraw.Draw(img), _font()
    for c, text in enumerate(cols or []):
        draw.text((c * (w + gap) + 2, 1), _fit_text(draw, text, w - 4, font), fill=(0, 0, 0), font=font)
    for r, row in enumerate(cells):
        y0 = head + r * (band + h + gap)
        if rows:
            draw.text((2, y0 + 1), _fit_text(draw, rows[r], width - 4, font), fill=(60, 60, 60), font=font)
        for c, cell in enumerate(row):
            if cell.shape[:2] != (h, w):
                raise ValueError(f"cell ({r}, {c}) is {cell.shape[:2]}, expected {(h, w)}")
            img.paste(Image.fromarray(np.ascontiguousarray(cell)), (c * (w + gap), y0 + band))
    return np.asarray(img)
