#!/usr/bin/env python
"""Occlusion maps per second: all occluded copies batched through the network versus one at a time.

    python scripts/bench_occlude.py                                 # VGG16 conv5_3, 224 px, patch 32, stride 16
    python scripts/bench_occlude.py --model mobilenet_v2 --layer features.14 --size 224

Both ways compute the same map (``analyses.occlude.occlusion_map``) of one unit on the same
image (random weights: the arithmetic is what is timed), ``batched`` with ``--batch`` copies per
forward pass, ``single`` with one copy per forward (the classic loop). Rounds are interleaved and
the best of ``--repeat`` counts, so a busy machine slows both alike; the maps are checked equal.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.analyses.occlude import occlusion_map, starts, unit_score  # noqa: E402
from pipeline.models.weights import load_network  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--layer", default="conv5_3")
    ap.add_argument("--feature", type=int, default=0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    net = load_network(a.model, "random", a.size).to(a.device)
    x = torch.randn(3, a.size, a.size, generator=torch.Generator().manual_seed(0)).to(a.device)
    score = unit_score(net, a.layer, a.feature)
    n = len(starts(a.size, a.patch, a.stride)) ** 2
    best = {"batched": float("inf"), "single": float("inf")}
    maps = {}
    occlusion_map(score, x, a.patch, a.stride, a.batch)  # warm-up
    for _ in range(a.repeat):
        for name, bs in (("batched", a.batch), ("single", 1)):
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            maps[name] = occlusion_map(score, x, a.patch, a.stride, bs)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - t)
    np.testing.assert_allclose(maps["batched"].scores, maps["single"].scores, rtol=1e-4,
                               atol=1e-5 * abs(maps["single"].base) + 1e-7)
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{a.model} {a.layer} unit {a.feature}, {a.size} px, patch {a.patch}, stride {a.stride}: "
          f"{n} occluded copies per map, on {dev}")
    for name in ("batched", "single"):
        print(f"  {name:<8} {best[name]:8.2f} s/map  {1 / best[name]:8.3f} maps/s  {n / best[name]:8.1f} copies/s")
    print(f"  speed-up batched / single: {best['single'] / best['batched']:.2f}x")


if __name__ == "__main__":
    main()
