"""README figure: the same units under Zeiler & Fergus's deconvnet on whole receptive fields and under
`mine render`'s defaults (guided backpropagation, shift-averaged where the stem is strided, effective crop).

One row per unit: deconvnet projections (receptive field) | default projections (effective crop) |
the image patches of the default crop | the receptive-field patches. Each block is the unit's 3 x 3
montage, made with the same functions as `mine render`.

    python scripts/figure_methods.py out/demo/demo.h5 --layer conv3_3 --units 12,40 --out docs/img/demo_methods.png
"""
from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from pipeline.pictures.montage import BLOCK_GAP, display_side, grid, grid_shape, label_band, save_png, to_display
from pipeline.render import Renderer, load_store_network
from pipeline.render.crop import unit_crop
from pipeline.render.normalise import display
from pipeline.store.read import Store, overview_channels

COLUMNS = ("deconvnet, receptive field", "default: guided, effective crop", "patches, effective crop",
           "patches, receptive field")


def _block(tiles: np.ndarray, k: int) -> np.ndarray:
    side = display_side(tiles.shape[1])
    return grid(list(to_display(tiles, side)), *grid_shape(k), tile=side)


def unit_row(old: Renderer, new: Renderer, layer: str, c: int) -> list[np.ndarray]:
    t_old, p_old, filled = old.feature(layer, c)
    t_new, p_new, _ = new.feature(layer, c)
    t_new, p_eff, _, _ = unit_crop(t_new, p_new, filled, "effective", new.size)
    k = len(filled)
    return [_block(display(t_old), k), _block(display(t_new), k), _block(p_eff, k), _block(p_old, k)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store")
    ap.add_argument("--layer", required=True)
    ap.add_argument("--units", default=None, help="channels, e.g. 12,40 (default: the overview's first 3)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with Store(args.store) as s:
        net = load_store_network(s)
        old = Renderer(s, net, "cpu", method="deconvnet")
        new = Renderer(s, net, "cpu", method="guided", shifts=None)
        units = ([int(u) for u in args.units.split(",")] if args.units else
                 overview_channels(s.arrays(args.layer), 3, int(s.layer_info(args.layer)["out_size"])))
        rows = [unit_row(old, new, args.layer, c) for c in units]
    height = 200  # every block the same height, labels above
    blocks = []
    for r, (c, row) in enumerate(zip(units, rows)):
        parts = []
        for j, b in enumerate(row):
            w = round(b.shape[1] * height / b.shape[0])
            b = np.asarray(Image.fromarray(b).resize((w, height), Image.Resampling.LANCZOS))
            parts.append(np.concatenate([label_band(COLUMNS[j], w), b]))
            parts.append(np.full((parts[-1].shape[0], BLOCK_GAP, 3), 255, np.uint8))
        row_img = np.concatenate(parts[:-1], 1)
        blocks.append(np.concatenate([label_band(f"{args.layer} unit {c}", row_img.shape[1]), row_img]))
    width = max(b.shape[1] for b in blocks)
    blocks = [np.pad(b, ((0, BLOCK_GAP), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks]
    save_png(np.concatenate(blocks)[:-BLOCK_GAP], args.out)
    print(f"{args.out}: {args.layer} units {units}")


if __name__ == "__main__":
    main()
