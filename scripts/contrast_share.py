"""Share of projection pixels more than 16 grey levels from mid-grey, per display contrast.

Projects every kept entry of the chosen features of each layer (default: the offline demo's
conv3_3 and conv4_3, all channels) and prints, for ``max`` (x / (2 max|x|) + 0.5, the 0.1
display) and ``robust`` (a high percentile of |x| per tile), the share of displayed values
(pixels x colour channels) whose grey level differs from mid-grey (128) by more than 16.

    python scripts/contrast_share.py out/demo/demo.h5 [--layers conv3_3,conv4_3] [--method deconvnet]
"""
from __future__ import annotations

import argparse

import numpy as np

from pipeline.render import Renderer, load_store_network
from pipeline.render.normalise import display
from pipeline.store.read import Store


def share(tiles: np.ndarray, contrast: str, levels: int = 16) -> float:
    px = display(tiles, contrast).astype(np.int16)
    return float((np.abs(px - 128) > levels).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store")
    ap.add_argument("--layers", default="conv3_3,conv4_3")
    ap.add_argument("--features", type=int, default=None, help="only the first N channels of each layer")
    ap.add_argument("--method", default="deconvnet")
    args = ap.parse_args()
    with Store(args.store) as s:
        rnd = Renderer(s, load_store_network(s), "cpu", method=args.method)
        print(f"{args.store}  method {args.method}  (share of displayed values > 16 grey levels from mid-grey)")
        print(f"{'layer':<10}{'tiles':>7}{'max':>9}{'robust':>9}")
        for layer in args.layers.split(","):
            a = s.arrays(layer)
            n = a["value"].shape[0] if args.features is None else min(args.features, a["value"].shape[0])
            c, r = np.nonzero(a["kept"][:n] >= 0)
            tiles, _ = rnd.project(layer, c, a["kept"][c, r], a["y"][c, r], a["x"][c, r], a["value"][c, r])
            print(f"{layer:<10}{len(tiles):>7}{share(tiles, 'max'):>9.1%}{share(tiles, 'robust'):>9.1%}")


if __name__ == "__main__":
    main()
