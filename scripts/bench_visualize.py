#!/usr/bin/env python
"""Feature visualisation throughput: units/s optimised as one batch versus one unit at a time.

    python scripts/bench_visualize.py                  # VGG16 conv4_3 and MobileNetV2 features.14, 224 px
    python scripts/bench_visualize.py --steps 8 --units 8 --size 128

Both ways run the same units for the same number of steps (random weights: the cost does not
depend on them) in one run, interleaved, best of ``--repeat``; the ratio is what batching buys.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data.preprocess import Preprocessing  # noqa: E402
from pipeline.devices import resolve_device  # noqa: E402
from pipeline.models.weights import load_network  # noqa: E402
from pipeline.visualize import VisualizeConfig, visualize_units  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="vgg16:conv4_3,mobilenet_v2:features.14")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--units", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    dev = resolve_device(a.device)
    print(f"device {dev}, {torch.get_num_threads()} threads, torch {torch.__version__}, {a.size} px, "
          f"{a.steps} steps, {a.units} units")
    print(f"{'model:layer':<28}{'batched units/s':>16}{'single units/s':>16}{'ratio':>8}")
    cfg = VisualizeConfig(steps=a.steps)
    for case in a.cases.split(","):
        model, layer = case.split(":")
        net = load_network(model, "random", a.size).to(dev)
        prep = Preprocessing(net.preprocessing_mode, a.size)
        units = list(range(a.units))
        tb = ts = float("inf")
        for _ in range(a.repeat):
            t = time.perf_counter()
            visualize_units(net, layer, units, prep, cfg)
            tb = min(tb, time.perf_counter() - t)
            t = time.perf_counter()
            for u in units:
                visualize_units(net, layer, [u], prep, cfg)
            ts = min(ts, time.perf_counter() - t)
        print(f"{case:<28}{a.units / tb:>16.3f}{a.units / ts:>16.3f}{ts / tb:>7.1f}x", flush=True)


if __name__ == "__main__":
    main()
