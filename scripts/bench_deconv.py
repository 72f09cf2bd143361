#!/usr/bin/env python
"""Deconvnet projections per second: batched + windowed versus one at a time on the full image.

    python scripts/bench_deconv.py                      # builds a small VGG16 store (random weights, 224 px)
    python scripts/bench_deconv.py --store my.h5 --layers conv3_3,conv4_3,conv5_3

For each layer, the same entries of the store are projected three ways, in one run:

* ``batched``: ``Deconvnet.project(window=True)`` over batches of entries (what `mine render`
  does): every level only on the receptive-field window;
* ``single``: one entry per call on the full image (``window=False``, batch of 1), the classic
  deconvnet loop, with the same switches, weights and memory layout;
* ``captum`` (if installed): Captum's ``Deconvolution`` one entry at a time (forward + backward
  on the full image, ReLU backward overridden), times the activation value.

Batched and single runs are timed in ``--repeat`` interleaved rounds and the best round of each
counts, so a busy machine slows both alike.

The switches are in memory for all three (store I/O is not part of the figure). The script also
checks that the batched tiles equal the single full-image projections cropped to the box.
Prints one table with projections/second and the speed-up ratios.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data.preprocess import Preprocessing, normalize  # noqa: E402
from pipeline.deconv import Deconvnet, Entries  # noqa: E402
from pipeline.render import load_store_network  # noqa: E402
from pipeline.store.read import Store  # noqa: E402


def build_store(out: Path, images: str, n_images: int, layers: str, size: int) -> Path:
    from pipeline import RunConfig, run

    cfg = RunConfig(images=images, layer=layers, model="vgg16", weights="random", size=size, limit=n_images,
                    workers=0, out=str(out), progress=False, device="cpu")
    return run(cfg).store


def pick_entries(store: Store, layer: str, n: int, seed: int = 0):
    """n filled entries spread over channels and ranks (seeded)."""
    a = store.arrays(layer)
    c, r = np.nonzero(a["kept"] >= 0)
    rng = np.random.default_rng(seed)
    sel = rng.permutation(len(c))[:n]
    c, r = c[sel], r[sel]
    return c, a["kept"][c, r], a["y"][c, r], a["x"][c, r], a["value"][c, r]


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def crop_full(full: torch.Tensor, y, x, r: int, s: int, p: int) -> torch.Tensor:
    pad = torch.nn.functional.pad(full, (r, r, r, r))
    return torch.stack([pad[i, :, y[i] * s - p + r:y[i] * s - p + 2 * r, x[i] * s - p + r:x[i] * s - p + 2 * r]
                        for i in range(len(y))])


def captum_rate(net, layer: str, store: Store, entries, n: int):
    try:
        from captum.attr import Deconvolution
    except ImportError:
        return None
    end = net.chain_index(layer)
    feats = copy.deepcopy(net.model.features[:end + 1]).cpu()
    for i, m in enumerate(feats):
        if isinstance(m, nn.ReLU):
            feats[i] = nn.ReLU(inplace=False)  # Captum hooks ReLU modules; in-place ones break them

    class Unit(nn.Module):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, x):
            return self.f(x).flatten(1)

    model = Unit(feats).eval()
    dec = Deconvolution(model)
    warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
    prep = Preprocessing.from_dict(store.attrs["preprocessing"])
    c, kept, y, x, v = entries
    w = net.layers[layer].out_size
    rows, inv = np.unique(kept[:n], return_inverse=True)
    inp = normalize(torch.from_numpy(store.pixels(rows)), prep)

    def go():
        for i in range(n):
            t = int(c[i]) * w * w + int(y[i]) * w + int(x[i])
            g = dec.attribute(inp[inv[i]:inv[i] + 1].clone().requires_grad_(True), target=t)
            _ = g * float(v[i])

    go_time = timed(go)
    return n / go_time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", help="an existing store (VGG16); default: build one in a temp folder")
    ap.add_argument("--images", default=str(ROOT / "data" / "demo"), help="images for the built store")
    ap.add_argument("--n-images", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--layers", default="conv3_3,conv4_3,conv5_3")
    ap.add_argument("--batched", type=int, default=0, help="entries for the batched run (default per layer)")
    ap.add_argument("--single", type=int, default=0, help="entries for the one-at-a-time runs (default per layer)")
    ap.add_argument("--batch-size", type=int, default=0, help="entries per batch (default: render's memory budget)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved rounds; the best round counts")
    ap.add_argument("--no-captum", action="store_true")
    ap.add_argument("--graph", default="resnet50:layer3.5", help="MODEL:LAYER for the general (autograd) path; '' skips")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = [s.strip() for s in args.layers.split(",") if s.strip()]

    tmp = None
    if args.store:
        path = Path(args.store)
    else:
        tmp = tempfile.TemporaryDirectory()
        t = time.perf_counter()
        path = build_store(Path(tmp.name) / "bench.h5", args.images, args.n_images, ",".join(layers), args.size)
        print(f"built {path.name}: VGG16 random weights, {args.n_images} images at {args.size} px "
              f"in {time.perf_counter() - t:.1f} s", flush=True)

    with Store(path) as store:
        net = load_store_network(store)
        dn = Deconvnet(net.chain_modules(), store.size)
        sw_all = {net.chain_index(p): torch.from_numpy(store.switches(p, slice(None))) for p in store.pools()}
        print(f"device cpu, {torch.get_num_threads()} threads, torch {torch.__version__}, input {store.size} px")
        head = f"{'layer':<9}{'R':>5}{'batch':>7}{'batched/s':>11}{'single/s':>10}{'ratio':>8}"
        head += f"{'captum/s':>10}{'vs captum':>11}{'max|diff|':>11}"
        print(head)
        for layer in layers:
            end = net.chain_index(layer)
            r, s, p = dn.geometry(end)
            deep = net.layers[layer].stride
            nb = args.batched or {4: 128, 8: 64}.get(deep, 32)
            ns = args.single or {4: 6, 8: 4}.get(deep, 3)
            ent = pick_entries(store, layer, max(nb, ns))
            c, kept, y, x, v = ent
            sw = {i: t for i, t in sw_all.items() if i <= end}
            per = dn.entry_bytes(end)
            bs = args.batch_size or int(max(1, min(256, (1 << 30) // per)))
            bs = min(bs, nb)
            nb = len(c) if len(c) < nb else nb
            with torch.inference_mode():
                dn.project(end, Entries(c[:bs], y[:bs], x[:bs], v[:bs], kept[:bs]), sw)  # warm-up
                dn.project(end, Entries(c[:1], y[:1], x[:1], v[:1], kept[:1]), sw, window=False)
                tiles = []

                def batched():
                    for st in range(0, nb, bs):
                        sl = slice(st, min(st + bs, nb))
                        tiles.append(dn.project(end, Entries(c[sl], y[sl], x[sl], v[sl], kept[sl]), sw))

                singles = []

                def single():
                    for i in range(ns):
                        singles.append(dn.project(end, Entries(c[i:i + 1], y[i:i + 1], x[i:i + 1], v[i:i + 1], kept[i:i + 1]),
                                                  sw, window=False))

                tb = ts = float("inf")
                for _ in range(max(1, args.repeat)):  # interleaved, so both see the same machine load
                    tiles.clear()
                    singles.clear()
                    tb = min(tb, timed(batched) / nb)
                    ts = min(ts, timed(single) / ns)
            full = torch.cat(singles)
            ref = crop_full(full, y[:ns], x[:ns], r, s, p)
            diff = float((torch.cat(tiles)[:ns] - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
            cap = None if args.no_captum else captum_rate(net, layer, store, ent, ns)
            line = f"{layer:<9}{r:>5}{bs:>7}{1 / tb:>11.1f}{1 / ts:>10.2f}{ts / tb:>7.1f}x"
            line += f"{cap:>10.2f}{cap and (1 / tb) / cap:>10.1f}x" if cap else f"{'-':>10}{'-':>11}"
            line += f"{diff:>11.1e}"
            print(line, flush=True)
    if tmp is not None:
        tmp.cleanup()
    if args.graph:
        graph_bench(args, *args.graph.split(":"))


def graph_bench(args, model: str, layer: str) -> None:
    """The general path (residual nets): batched autograd projections vs one at a time vs Captum."""
    from pipeline import RunConfig, run
    from pipeline.deconv import Entries, project_graph

    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(images=args.images, layer=layer, model=model, weights="random", size=args.size,
                        limit=args.n_images, workers=0, out=str(Path(tmp) / "g.h5"), progress=False, device="cpu")
        with Store(run(cfg).store) as store:
            net = load_store_network(store)
            prep = Preprocessing.from_dict(store.attrs["preprocessing"])
            nb, ns, bs = args.batched or 32, args.single or 4, args.batch_size or 16
            c, kept, y, x, v = (torch.as_tensor(a) for a in pick_entries(store, layer, nb))
            rows, inv = np.unique(kept.numpy(), return_inverse=True)
            inp = normalize(torch.from_numpy(store.pixels(rows)), prep)[torch.as_tensor(inv)]

            def batched():
                for st in range(0, nb, bs):
                    sl = slice(st, st + bs)
                    project_graph(net, layer, inp[sl], Entries(c[sl], y[sl], x[sl], v[sl]))

            def single():
                for i in range(ns):
                    sl = slice(i, i + 1)
                    project_graph(net, layer, inp[sl], Entries(c[sl], y[sl], x[sl], v[sl]))

            tb = ts = float("inf")
            for _ in range(max(1, args.repeat)):
                tb, ts = min(tb, timed(batched) / nb), min(ts, timed(single) / ns)
            cap = None if args.no_captum else graph_captum_rate(net, layer, inp, (c, y, x, v), ns)
            print(f"\n{model} {layer} (general autograd path, {args.size} px): batched {1 / tb:.1f} proj/s "
                  f"(batch {bs}), one at a time {1 / ts:.2f} proj/s, ratio {ts / tb:.1f}x"
                  + (f"; Captum Deconvolution {cap:.2f} proj/s, ours {(1 / tb) / cap:.1f}x" if cap else ""))


def graph_captum_rate(net, layer, inp, entries, n):
    try:
        from captum.attr import Deconvolution
    except ImportError:
        return None
    body = copy.deepcopy(net.model)
    for m in body.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    path, w = net.layers[layer].module, net.layers[layer].out_size

    class Unit(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body

        def forward(self, t):
            out = {}
            h = self.body.get_submodule(path).register_forward_hook(lambda m, i, o: out.setdefault("o", o))
            self.body(t)
            h.remove()
            return out["o"].flatten(1)

    dec = Deconvolution(Unit().eval())
    warnings.filterwarnings("ignore")
    c, y, x, v = entries
    t0 = time.perf_counter()
    for i in range(n):
        dec.attribute(inp[i:i + 1].clone().requires_grad_(True), target=int(c[i] * w * w + y[i] * w + x[i]))
    return n / (time.perf_counter() - t0)


if __name__ == "__main__":
    main()
