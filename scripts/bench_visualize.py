#!/usr/bin/env python
"""Feature visualisation benchmarks: throughput, scale robustness, units that stay blank.

    python scripts/bench_visualize.py throughput       # units/s, one batch vs one unit at a time
    python scripts/bench_visualize.py scale            # objective at 1x and 1.75x, before / after
    python scripts/bench_visualize.py alive            # every unit rises above its start image?

``throughput``: both ways run the same units for the same number of steps (random weights: the
cost does not depend on them) in one run, interleaved, best of ``--repeat``; the ratio is what
batching buys.

``scale``: MobileNetV2 (ImageNet) features.11 at 128 px, units 0-7, 512 steps by default. Each
optimised image is scored by a plain forward (the mean of the unit's map) as it is and upsampled
bilinearly by ``--factor``; "before" is the optimiser without the redirected ReLU gradient and
without random input sizes (``redirect=0, zoom=(1, 1)``: the code as it was), "after" its defaults.

``alive``: every unit of a layer (HED VGG16 conv3_3 with torchvision preprocessing by default, as
a checkpoint of that network loaded with ``--weights PATH`` gets it): the unit's mean on its start
image (the flat grey of a Fourier image near zero) and on the optimised image; lists the units
that do not rise above their start, with and (``--compare``) without the redirected gradient.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data.preprocess import Preprocessing, normalize_float  # noqa: E402
from pipeline.devices import resolve_device  # noqa: E402
from pipeline.models.weights import load_network  # noqa: E402
from pipeline.pictures.names import parse_features  # noqa: E402
from pipeline.visualize import VisualizeConfig, visualize_units  # noqa: E402
from pipeline.visualize.optimize import layer_output  # noqa: E402

BEFORE = dict(redirect=0.0, zoom=(1.0, 1.0))


def throughput(a) -> None:
    print(f"{'model:layer':<28}{'batched units/s':>16}{'single units/s':>16}{'ratio':>8}")
    cfg = VisualizeConfig(steps=a.steps)
    for case in a.cases.split(","):
        model, layer = case.split(":")
        net = load_network(model, "random", a.size).to(a.dev)
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


def unit_means(net, layer: str, units: list[int], images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """(B,) mean of unit ``units[b]``'s map on image b (any input size)."""
    with torch.no_grad():
        out = layer_output(net, layer, normalize_float(images.to(net.device), prep))
    return out[torch.arange(len(units)), units].flatten(1).mean(1).cpu()


def optimise(net, layer, units, prep, a, **kw) -> tuple[torch.Tensor, float]:
    out, t = [], time.perf_counter()
    for i in range(0, len(units), a.batch_size):
        out.append(visualize_units(net, layer, units[i:i + a.batch_size], prep, VisualizeConfig(steps=a.steps, **kw)))
    return torch.cat(out), time.perf_counter() - t


def scale(a) -> None:
    net = load_network(a.model, a.weights, a.size).to(a.dev)
    prep = Preprocessing(a.prep or net.preprocessing_mode, a.size)
    units = parse_features(a.units)
    big = round(a.size * a.factor)
    print(f"{a.model} ({a.weights}) {a.layer}, {a.size} px, {a.steps} steps, units {a.units}: the unit's mean at "
          f"1x ({a.size} px) and {a.factor}x ({big} px, bilinear)")
    for name, kw in (("before", BEFORE), ("after", {})):
        vis, secs = optimise(net, a.layer, units, prep, a, **kw)
        at1 = unit_means(net, a.layer, units, vis, prep)
        atf = unit_means(net, a.layer, units, F.interpolate(vis, size=big, mode="bilinear", align_corners=False), prep)
        print(f"{name:<7} {'1x':>6} {' '.join(f'{v:6.2f}' for v in at1)}   mean {at1.mean():.2f}")
        print(f"{'':<7} {f'{a.factor:g}x':>6} {' '.join(f'{v:6.2f}' for v in atf)}   mean {atf.mean():.2f}"
              f"   kept {atf.mean() / at1.mean():.0%}   ({secs:.0f} s)", flush=True)


def alive(a) -> None:
    net = load_network(a.model, a.weights, a.size).to(a.dev)
    prep = Preprocessing(a.prep or net.preprocessing_mode, a.size)
    units = parse_features(a.units) if a.units != "all" else list(range(net.layers[a.layer].channels))
    start = torch.cat([visualize_units(net, a.layer, units[i:i + a.batch_size], prep, VisualizeConfig(steps=1, lr=1e-9))
                       for i in range(0, len(units), a.batch_size)])  # the start images (one step of 1e-9)
    at_start = unit_means(net, a.layer, units, start, prep)
    print(f"{a.model} ({a.weights}, {prep.mode} preprocessing) {a.layer}, {a.size} px, {a.steps} steps, "
          f"{len(units)} units; {int((at_start == 0).sum())} silent (mean 0) on their start image")
    for name, kw in (("after", {}),) + ((("without redirect", {"redirect": 0.0}),) if a.compare else ()):
        vis, secs = optimise(net, a.layer, units, prep, a, **kw)
        got = unit_means(net, a.layer, units, vis, prep)
        fail = [u for u, s, g in zip(units, at_start.tolist(), got.tolist()) if not g > s]
        flat = [u for u, img in zip(units, vis) if float(img.std()) < 0.01]
        print(f"{name}: {len(units) - len(fail)}/{len(units)} units above their start, median mean {got.median():.3g}; "
              f"not above: {fail or 'none'}; flat (std < 0.01): {flat or 'none'} ({secs:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--cases", default="vgg16:conv4_3,mobilenet_v2:features.14")
    t.add_argument("--size", type=int, default=224)
    t.add_argument("--steps", type=int, default=16)
    t.add_argument("--units", type=int, default=16)
    t.add_argument("--repeat", type=int, default=1)
    s = sub.add_parser("scale")
    s.add_argument("--model", default="mobilenet_v2")
    s.add_argument("--weights", default="imagenet")
    s.add_argument("--layer", default="features.11")
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--units", default="0-7")
    s.add_argument("--steps", type=int, default=512)
    s.add_argument("--factor", type=float, default=1.75)
    v = sub.add_parser("alive")
    v.add_argument("--model", default="vgg16")
    v.add_argument("--weights", default="hed")
    v.add_argument("--layer", default="conv3_3")
    v.add_argument("--size", type=int, default=64)
    v.add_argument("--units", default="all")
    v.add_argument("--steps", type=int, default=64)
    v.add_argument("--compare", action="store_true", help="also run without the redirected ReLU gradient")
    for p, prep in ((s, ""), (v, "torchvision")):
        p.add_argument("--prep", default=prep, help="torchvision | caffe; '' for the weights' own")
        p.add_argument("--batch-size", type=int, default=16)
    for p in (t, s, v):
        p.add_argument("--device", default="auto")
    a = ap.parse_args()
    a.dev = resolve_device(a.device)
    print(f"device {a.dev}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    {"throughput": throughput, "scale": scale, "alive": alive}[a.what](a)


if __name__ == "__main__":
    main()
