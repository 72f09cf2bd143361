"""docs figure: units' feature visualisations (``mine visualize``) beside their top-9 image patches.

One block per unit: the image optimised for the unit (``--size`` px, ``--steps`` steps, seeded) and the
unit's 3 x 3 montage of receptive-field patches from the store, made with the functions
`mine visualize` and `mine render` use. Two blocks a row.

    python scripts/figure_visualize.py out/demo/mobilenet.h5 --layer features.11 --units 0,1,2,3 \
        --out docs/img/mobilenet_features11_visualize.png
"""
from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from pipeline.pictures.montage import BLOCK_GAP, display_side, grid, grid_shape, label_band, save_png, to_display
from pipeline.render import Renderer, load_store_network
from pipeline.store.read import Store
from pipeline.visualize import VisualizeConfig, visualize_units
from pipeline.visualize.files import to_uint8


def block(layer: str, c: int, vis: np.ndarray, patches: np.ndarray, height: int) -> np.ndarray:
    """``vis | patches`` at one height, labelled above."""
    side = display_side(patches.shape[1])
    montage = grid(list(to_display(patches, side)), *grid_shape(len(patches)), tile=side)
    parts = []
    for img in (vis, montage):
        w = round(img.shape[1] * height / img.shape[0])
        parts.append(np.asarray(Image.fromarray(img).resize((w, height), Image.Resampling.LANCZOS)))
    gap = np.full((height, BLOCK_GAP, 3), 255, np.uint8)
    body = np.concatenate([parts[0], gap, parts[1]], 1)
    return np.concatenate([label_band(f"{layer} unit {c}: visualisation | top-9 patches", body.shape[1]), body])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store")
    ap.add_argument("--layer", required=True)
    ap.add_argument("--units", default="0,1,2,3")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    units = [int(u) for u in args.units.split(",")]
    with Store(args.store) as s:
        net = load_store_network(s)
        layer = s.select(args.layer)[0]
        rnd = Renderer(s, net, "cpu", method="deconvnet", shifts=None)
        patches = [rnd.feature(layer, c)[1] for c in units]
    vis = visualize_units(net, layer, units, net.prep(args.size), VisualizeConfig(steps=args.steps, progress=False))
    vis = to_uint8(vis.numpy())
    blocks = [block(layer, c, v, p, 200) for c, v, p in zip(units, vis, patches)]
    rows = []
    for i in range(0, len(blocks), 2):
        pair = blocks[i:i + 2]
        gap = np.full((pair[0].shape[0], BLOCK_GAP, 3), 255, np.uint8)
        rows.append(np.concatenate([pair[0], gap, pair[1]], 1) if len(pair) == 2 else pair[0])
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, BLOCK_GAP), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    save_png(np.concatenate(rows)[:-BLOCK_GAP], args.out)
    print(f"{args.out}: {layer} units {units}")


if __name__ == "__main__":
    main()
