"""Files of ``mine visualize``, named like the render montages so pages can link them.

    {layer}_vis_{c}.png   the unit's optimised image at the network's input size
    {layer}_vis_{c}.npy   with save_arrays: float32 (3, H, W), RGB in [0, 1], before normalisation
    {layer}_vis.png       every visualised unit of the layer, in channel order, in one grid
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..render.montage import grid, grid_shape, save_png
from ..render.names import feature_files, safe_name


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
            tmp = out / f".{fs['array']}.tmp-{os.getpid()}.npy"
            np.save(tmp, img.astype(np.float32))
            os.replace(tmp, out / fs["array"])


def write_layer_grid(out: Path, layer: str, channels: list[int]) -> Path:
    """The grid of every ``{layer}_vis_{c}.png`` present in ``out`` for ``channels``."""
    from PIL import Image

    tiles = []
    for c in channels:
        p = out / vis_files(layer, c)["png"]
        if p.exists():
            with Image.open(p) as im:
                tiles.append(np.asarray(im.convert("RGB")))
    path = out / layer_vis_file(layer)
    if tiles:
        save_png(grid(tiles, *grid_shape(len(tiles))), path)
    return path
