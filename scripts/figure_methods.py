"""README figure: the same units under Zeiler & Fergus's deconvnet on whole receptive fields and under
`mine render`'s defaults (guided backpropagation, shift-averaged where the stem is strided, effective crop).

One row per unit: deconvnet projections (receptive field) | default projections (effective crop) |
the image patches of the default crop | the receptive-field patches. Each block is the unit's 3 x 3
montage, made with the same functions as `mine render`. ``--methods`` sets the projection columns
(the deconvnet on the receptive field, any other method shift-averaged as render does and cut to
its effective crop; the patch columns follow the last one).

    python scripts/figure_methods.py out/demo/demo.h5 --layer conv3_3 --units 12,40 --out docs/img/demo_methods.png
    python scripts/figure_methods.py out/demo/mobilenet.h5 --layer features.11 --methods guided,epsilon_plus_flat ...
"""
from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from pipeline.deconv import DEFAULT_METHOD
from pipeline.pictures.montage import BLOCK_GAP, display_side, grid, grid_shape, label_band, save_png, to_display
from pipeline.render import Renderer, load_store_network
from pipeline.render.crop import unit_crop
from pipeline.render.normalise import display
from pipeline.store.read import Store, overview_channels

PATCH_COLUMNS = ("patches, effective crop", "patches, receptive field")


def _block(tiles: np.ndarray, k: int) -> np.ndarray:
    side = display_side(tiles.shape[1])
    return grid(list(to_display(tiles, side)), *grid_shape(k), tile=side)


def column_name(asked: str, method: str) -> str:
    """A block's label: the method (what the default ``auto`` chose marked so); every method but the
    deconvnet is cut to its effective crop, as render does (the patch column beside says so)."""
    if method == "deconvnet":
        return "deconvnet, receptive field"
    return f"{'auto: ' if asked == DEFAULT_METHOD else ''}{method.replace('_', ' ')}"


def unit_row(renderers: list[Renderer], layer: str, c: int) -> list[np.ndarray]:
    out = []
    for r in renderers:
        tiles, patches, filled = r.feature(layer, c)
        k = len(filled)
        if r.method != "deconvnet":
            tiles, p_eff, _, _ = unit_crop(tiles, patches, filled, "effective", r.size)
        out.append(_block(display(tiles), k))
    if renderers[-1].method == "deconvnet":
        p_eff = patches
    return out + [_block(p_eff, k), _block(patches, k)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store")
    ap.add_argument("--layer", required=True)
    ap.add_argument("--units", default=None, help="channels, e.g. 12,40 (default: the overview's first 3)")
    ap.add_argument("--methods", default=f"deconvnet,{DEFAULT_METHOD}", help="projection columns, in order")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    methods = args.methods.split(",")
    with Store(args.store) as s:
        net = load_store_network(s)
        renderers = [Renderer(s, net, "cpu", method=m, shifts=None) for m in methods]
        columns = [column_name(m, r.method) for m, r in zip(methods, renderers)] + list(PATCH_COLUMNS)
        units = ([int(u) for u in args.units.split(",")] if args.units else
                 overview_channels(s.arrays(args.layer), 3, int(s.layer_info(args.layer)["out_size"])))
        rows = [unit_row(renderers, args.layer, c) for c in units]
    height = 200  # every block the same height, labels above
    blocks = []
    for c, row in zip(units, rows):
        parts = []
        for j, b in enumerate(row):
            w = round(b.shape[1] * height / b.shape[0])
            b = np.asarray(Image.fromarray(b).resize((w, height), Image.Resampling.LANCZOS))
            parts.append(np.concatenate([label_band(columns[j], w), b]))
            parts.append(np.full((parts[-1].shape[0], BLOCK_GAP, 3), 255, np.uint8))
        row_img = np.concatenate(parts[:-1], 1)
        blocks.append(np.concatenate([label_band(f"{args.layer} unit {c}", row_img.shape[1]), row_img]))
    width = max(b.shape[1] for b in blocks)
    blocks = [np.pad(b, ((0, BLOCK_GAP), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks]
    save_png(np.concatenate(blocks)[:-BLOCK_GAP], args.out)
    print(f"{args.out}: {args.layer} units {units}")


if __name__ == "__main__":
    main()
