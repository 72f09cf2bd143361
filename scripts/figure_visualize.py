"""docs figure: units' feature visualisations (``mine visualize``) beside their top-9 image patches.

One block per unit: the image optimised for the unit (``--size`` px, ``--steps`` steps, seeded) and the
unit's 3 x 3 montage of receptive-field patches from the store, laid out two a row by `mine render`'s
``overview``.

    python scripts/figure_visualize.py out/demo/mobilenet.h5 --layer features.11 --units 0,1,2,3 \
        --out docs/img/mobilenet_features11_visualize.png
"""
from __future__ import annotations

import argparse

import numpy as np

from pipeline.pictures.montage import (
    BLOCK_GAP,
    display_side,
    fit_height,
    grid,
    grid_shape,
    overview,
    save_png,
    side_by_side,
    to_display,
)
from pipeline.render import Renderer, load_store_network
from pipeline.store.read import Store
from pipeline.visualize import VisualizeConfig, visualize_units
from pipeline.visualize.files import to_uint8


def pair(vis: np.ndarray, patches: np.ndarray, height: int) -> np.ndarray:
    """``vis | patches montage`` at one height, as `mine render` pairs projections and patches."""
    side = display_side(patches.shape[1])
    montage = grid(list(to_display(patches, side)), *grid_shape(len(patches)), tile=side)
    return side_by_side(fit_height(vis, height), fit_height(montage, height), gap=BLOCK_GAP)


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
    labels = [f"{layer} unit {c}: visualisation | top-9 patches" for c in units]
    save_png(overview([pair(v, p, 200) for v, p in zip(vis, patches)], cols=2, labels=labels), args.out)
    print(f"{args.out}: {layer} units {units}")


if __name__ == "__main__":
    main()
