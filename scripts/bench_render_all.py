"""Render speed per layer: projections/s of `mine render` (default method: guided, --crop effective)
on every conv layer of a store, and what rendering every unit would take.

    PYTHONPATH=. python scripts/bench_render_all.py                      # demo store, 8 units a layer
    PYTHONPATH=. python scripts/bench_render_all.py --units 4 --layers conv1_1,conv5_3
    PYTHONPATH=. python scripts/bench_render_all.py --together           # 8 units a layer, one render
    PYTHONPATH=. python scripts/bench_render_all.py --all                # every unit, one render

Each layer is rendered alone (its first N units, no layer-level images, --force) into a temporary
folder; the table gives seconds, projections/s, seconds per unit, the time every unit of the layer
would take at that rate, and the FLOPs bound: a windowed projection's transposed convolutions (the
windows of ``Deconvnet.levels``) and the forward pass to the layer per kept image, at the conv2d
rate this machine measures now. Run it with another checkout on PYTHONPATH to measure the code
before a change (it only calls ``render_store`` with keyword options). Prints markdown
(docs/performance.md). Load matters on a shared machine: the load average is printed.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from pipeline.render import render_store
from pipeline.render.renderer import Renderer, load_store_network
from pipeline.store.read import Store


def conv_rate(size: int = 56, ch: int = 128, reps: int = 3) -> float:
    """GFLOP/s of a 3x3 conv2d (batch 4) on this machine now (best of ``reps``)."""
    x = torch.randn(4, ch, size, size)
    conv = nn.Conv2d(ch, ch, 3, padding=1)
    flops = 2 * 4 * size * size * ch * ch * 9
    best = float("inf")
    with torch.inference_mode():
        conv(x)
        for _ in range(reps):
            t = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def flops(rnd: Renderer, layer: str) -> tuple[float, float]:
    """(GFLOP of one windowed projection, GFLOP of the forward pass to the layer for one image)."""
    end = rnd.net.chain_index(layer)
    if rnd.chain is None or end is None:
        return float("nan"), float("nan")
    back = 0.0
    for lv in rnd.chain.levels(end):
        if lv.kind == "conv":
            m = rnd.chain.modules[lv.index]
            n = min(lv.win_out, lv.out_size)
            back += 2 * n * n * m.out_channels * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
    fwd = 0.0
    size = rnd.size
    x = torch.zeros(1, 3, size, size)
    with torch.inference_mode():
        for m in rnd.chain.modules[:end + 1]:
            y = m(x)
            if isinstance(m, nn.Conv2d):
                fwd += 2 * y.shape[2] * y.shape[3] * m.out_channels * m.in_channels // m.groups * m.kernel_size[0] \
                    * m.kernel_size[1]
            x = y
    return back / 1e9, fwd / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="out/demo/demo.h5")
    ap.add_argument("--layers", default=None, help="Comma-separated layers (default: every layer of the store).")
    ap.add_argument("--units", type=int, default=8, help="Units rendered per layer.")
    ap.add_argument("--all", action="store_true", help="Render every unit of every layer in one call instead.")
    ap.add_argument("--together", action="store_true",
                    help="Render the first N units of every layer in one call (forward passes shared by the layers).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="Output folder (default: a temporary one).")
    a = ap.parse_args()
    tmp = Path(a.out or tempfile.mkdtemp(prefix="bench-render-"))
    with Store(a.store) as store:
        layers = a.layers.split(",") if a.layers else list(store.layers)
        channels = {n: store.channels(n) for n in layers}
        rnd = Renderer(store, load_store_network(store), "cpu")
        cost = {n: flops(rnd, n) for n in layers}
        images = store.n_kept
        size = store.size
    rate = conv_rate()
    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}"
          f", {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, conv2d {rate:.0f} GFLOP/s now")
    print(f"store {a.store}: {size} px, {images} kept images, {sum(channels.values())} units in {len(layers)} layers")
    if a.all or a.together:
        spent = {"forward": 0.0}
        try:  # the shared forward passes (render.forward), timed apart: paid once per image, not per unit
            from pipeline.render import forward as fw

            run = fw.Forwards._run

            def timed(self, group):
                t = time.perf_counter()
                run(self, group)
                spent["forward"] += time.perf_counter() - t
            fw.Forwards._run = timed
        except ImportError:  # code before render.forward: forward passes per layer and batch, inside units
            pass
        t = time.perf_counter()
        some = {} if a.all else {"features": f"0-{a.units - 1}", "overview_features": 0, "force": True}
        res = render_store(a.store, out=tmp / "all", layers=layers, device=a.device, progress=a.all, **some)
        s = time.perf_counter() - t
        print(res.summary())
        print(f"{'every unit' if a.all else f'{a.units} units of each layer, one call'}: {s:.0f} s, "
              f"{res.projections / s:.1f} projections/s")
        if a.together and spent["forward"]:
            per_unit = (s - spent["forward"]) / max(res.rendered, 1)
            n = sum(channels.values())
            print(f"forward passes {spent['forward']:.0f} s (once per kept image), then {per_unit:.2f} s per unit: "
                  f"every unit ({n}) about {(spent['forward'] + per_unit * n) / 60:.0f} min "
                  "(units of deeper layers cost more: weight by the per-layer table)")
        return
    print("\n| layer | units | s | projections/s | s/unit | every unit (min) | GFLOP/projection | GFLOP forward/image "
          "| bound, every unit (min) |")
    print("|---|---|---|---|---|---|---|---|---|")
    total = bound_total = 0.0
    for n in layers:
        units = min(a.units, channels[n])
        t = time.perf_counter()
        res = render_store(a.store, out=tmp / n, layers=n, features=f"0-{units - 1}", overview_features=0,
                           device=a.device, progress=False, force=True)
        s = time.perf_counter() - t
        every = s / units * channels[n] / 60
        back, fwd = cost[n]
        bound = (channels[n] * 9 * back + images * fwd) / rate / 60
        total += every
        bound_total += bound
        print(f"| {n} | {units} | {s:.1f} | {res.projections / s:.1f} | {s / units:.2f} | {every:.1f} | {back:.2f} "
              f"| {fwd:.1f} | {bound:.1f} |", flush=True)
    print(f"\nevery unit of the {len(layers)} layers, extrapolated: {total:.0f} min; FLOPs bound at {rate:.0f} GFLOP/s: "
          f"{bound_total:.0f} min")


if __name__ == "__main__":
    main()
