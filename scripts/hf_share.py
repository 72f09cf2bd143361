"""How much of a projection is stripes and speckle: the share of its power at >= 1/4 cycle per pixel.

The measure agrees with the eye (issue "readable by default"): colour channels summed, the mean
removed, the 2-D power spectrum of the projection at input-pixel resolution (no resampling), and
the share of the power at frequencies whose larger component max(|fy|, |fx|) is at least 1/4
cycle per pixel. A period-4 stride grid or pixel speckle sits there; edges and blobs do not.
Readable projections (guided backprop on VGG16) score 0.25-0.3, the deconvnet's stripe grids
0.8-0.98. Printed: the median over the top-k entries of a layer's strongest feature maps.

    python scripts/hf_share.py STORE --layers conv3_3,conv4_3 [--method auto] [--shifts N] [--maps 16]
    python scripts/hf_share.py --arrays 'render/conv3_3_feat_*.npy'    # arrays of `mine render --save-arrays`
"""
from __future__ import annotations

import argparse
import glob
import time

import numpy as np

CUTOFF = 0.25


def hf_share(projection: np.ndarray, cutoff: float = CUTOFF) -> float:
    """Share of the spectral power of a (C, H, W) projection at max(|fy|, |fx|) >= ``cutoff`` cycles/pixel."""
    a = np.asarray(projection, np.float64)
    a = a.sum(0) if a.ndim == 3 else a
    a = a - a.mean()
    power = np.abs(np.fft.fft2(a)) ** 2
    fy = np.abs(np.fft.fftfreq(a.shape[0]))[:, None]
    fx = np.abs(np.fft.fftfreq(a.shape[1]))[None, :]
    total = power.sum()
    return float(power[np.maximum(fy, fx) >= cutoff].sum() / total) if total > 0 else 0.0


def median_share(tiles) -> float:
    """Median :func:`hf_share` of projections, skipping all-zero ones (empty slots)."""
    shares = [hf_share(t) for t in tiles if np.any(t)]
    return float(np.median(shares)) if shares else float("nan")


def cropped(tiles: np.ndarray, crop: str, size: int) -> list[np.ndarray]:
    """One feature map's projections as `mine render --crop` cuts them (render.crop's rule)."""
    from pipeline.render.crop import effective_boxes, min_side

    if crop == "rf":
        return list(tiles)
    side, corners = effective_boxes(tiles, min_side(size))
    return [t[:, y:y + side, x:x + side] for t, (y, x) in zip(tiles, corners)]


def _store(args) -> None:
    from pipeline.render import Renderer, load_store_network
    from pipeline.store.read import Store, strongest_channels

    with Store(args.store) as s:
        rnd = Renderer(s, load_store_network(s), args.device, method=args.method, shifts=args.shifts)
        print(f"{args.store}  method {rnd.method}  shifts {rnd.shifts}  crop {args.crop}  ({args.maps} strongest maps "
              "per layer)")
        print(f"{'layer':<14}{'entries':>8}{'hf share':>10}{'proj/s':>9}")
        for layer in args.layers.split(","):
            a = s.arrays(layer)
            chans = strongest_channels(a, args.maps)
            c, r = np.nonzero(a["kept"][chans] >= 0)
            c = np.asarray(chans)[c]
            t0 = time.perf_counter()
            tiles, _ = rnd.project(layer, c, a["kept"][c, r], a["y"][c, r], a["x"][c, r], a["value"][c, r])
            dt = time.perf_counter() - t0
            shown = [t for ch in chans for t in cropped(tiles[c == ch], args.crop, s.size)]
            print(f"{layer:<14}{len(c):>8}{median_share(shown):>10.3f}{len(c) / dt:>9.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store", nargs="?")
    ap.add_argument("--layers", default="conv3_3,conv4_3,conv5_3")
    ap.add_argument("--method", default="auto", help="auto (render's default; per model) or any `mine render --method`")
    ap.add_argument("--shifts", type=int, default=None, help="shift averaging (default: the model's auto choice)")
    ap.add_argument("--maps", type=int, default=16, help="strongest feature maps per layer")
    ap.add_argument("--crop", default="effective", help="effective (the default render) | rf (whole receptive field)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arrays", help="glob of (k, 3, T, T) .npy files instead of a store")
    args = ap.parse_args()
    if args.arrays:
        files = sorted(glob.glob(args.arrays))
        tiles = [t for f in files for t in np.load(f)]
        print(f"{len(files)} files, {len(tiles)} tiles: median hf share {median_share(tiles):.3f}")
    elif args.store:
        _store(args)
    else:
        ap.error("give a STORE or --arrays")


if __name__ == "__main__":
    main()
