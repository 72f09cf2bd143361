"""Files of ``mine visualize``, named like the render montages so pages can link them.

    {layer}_vis_{c}.png   the unit's optimised image at the network's input size
    {layer}_vis_{c}.npy   with save_arrays: float32 (3, H, W), RGB in [0, 1], before normalisation
    {layer}_vis.png       every visualised unit of the layer, in channel order, in one grid: each tile
                          enlarged by one integer factor (nearest neighbour) so the grid is at least
                          GRID_WIDTH pixels wide, its unit number above it
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..durable import save_array
from ..pictures.montage import BACKGROUND, grid_shape, save_png, to_display
from ..pictures.names import feature_files, safe_name
from ..pictures.sheet import labelled_grid

GRID_WIDTH = 600
GRID_GAP = 6


def vis_files(layer: str, c: int) -> dict[str, str]:
    fs = feature_files(layer, c)  # one naming for render and visualize: unit pages link these
    return {"png": fs["vis"], "array": fs["vis_array"]}


def layer_vis_file(layer: str) -> str:
    return f"{safe_name(layer)}_vis.png"


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8."""
    return (np.clip(images, 0, 1).transpose(0, 2, 3, 1) * 255 + 0.5).astype(np.uint8)


def write_unit_images(out: Path, layer: str, channels: list[int], images: np.ndarray, save_arrays: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for c, img, px in zip(channels, images, to_uint8(images)):
        fs = vis_files(layer, c)
        save_png(px, out / fs["png"])
        if save_arrays:
            save_array(out / fs["array"], img.astype(np.float32))


def unit_grid(tiles: list[np.ndarray], channels: list[int], width: int = GRID_WIDTH) -> np.ndarray:
    """(T, T, 3) uint8 tiles, one per unit, as a labelled grid at least ``width`` pixels wide."""
    cols = grid_shape(len(tiles))[1]
    t = tiles[0].shape[0]
    factor = max(1, -(-(width - (cols - 1) * GRID_GAP) // (cols * t)))
    big = list(to_display(np.stack(tiles), t * factor))  # a whole factor: nearest neighbour
    bands = [labelled_grid([big[i:i + cols]], cols=[f"unit {c}" for c in channels[i:i + cols]], gap=GRID_GAP)
             for i in range(0, len(big), cols)]  # one captioned row of tiles each
    out = np.full((sum(b.shape[0] for b in bands) + (len(bands) - 1) * GRID_GAP, bands[0].shape[1], 3),
                  BACKGROUND, np.uint8)
    y = 0
    for b in bands:
        out[y:y + b.shape[0], :b.shape[1]] = b
        y += b.shape[0] + GRID_GAP
    return out


def write_layer_grid(out: Path, layer: str, channels: list[int]) -> Path:
    """The labelled grid (:func:`unit_grid`) of every ``{layer}_vis_{c}.png`` present in ``out`` for ``channels``."""
    from PIL import Image

    tiles, shown = [], []
    for c in channels:
        p = out / vis_files(layer, c)["png"]
        if p.exists():
            with Image.open(p) as im:
                tiles.append(np.asarray(im.convert("RGB")))
                shown.append(c)
    path = out / layer_vis_file(layer)
    if tiles:
        save_png(unit_grid(tiles, shown), path)
    return path
