#!/usr/bin/env python
"""Mining overhead and memory, measured in one run on this machine.

Prints, on the same decoded images and batch size:
  - images/s of a bare torchvision forward pass up to the deepest requested layer (the graph
    truncated there by torchvision's ``create_feature_extractor``: no hooks, nothing above it),
  - images/s of mine's streaming pass (hooks + spatial max + running top-k) for one layer and
    for the model's default layer set (``--layer all``), and their ratios to the bare pass,
    for each model of ``--models`` (vgg16, resnet50, mobilenet_v2 by default),
  - decode-only throughput of the data path (files -> uint8 tensors),
  - peak RSS of a full `mine run` over 1k and 10k generated JPEGs (child processes).

Targets on the 2-core CPU: all default layers >= 0.90 x bare, one layer >= 0.95 x,
peak RSS for 10k within 10% of 1k.

    python scripts/bench_mine.py                 # defaults: vgg16, 224 px, 32 images, batch 16
    python scripts/bench_mine.py --quick         # smaller, for a smoke test
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.models.feature_extraction import create_feature_extractor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data import ImageDataset, Preprocessing, make_loader, normalize, resolve_images  # noqa: E402
from pipeline.mining.stream import new_state, stream  # noqa: E402
from pipeline.models.weights import load_network  # noqa: E402


def make_jpegs(folder: Path, n: int, size=(500, 375), distinct_bases: int = 40) -> None:
    """``n`` realistic-size JPEGs: a few smooth random bases, each copy made unique by
    trailing bytes after the JPEG end marker (decoders ignore them; the hash changes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    bases = []
    for _ in range(min(n, distinct_bases)):
        low = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize(size, Image.BICUBIC)
        arr = np.clip(np.asarray(low).astype(int) + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=85)
        bases.append(buf.getvalue())
    for i in range(n):
        (folder / f"{i // 1000:03d}" if n > 1000 else folder).mkdir(exist_ok=True)
        sub = folder / f"{i // 1000:03d}" if n > 1000 else folder
        (sub / f"img{i:06d}.jpg").write_bytes(bases[i % len(bases)] + i.to_bytes(8, "big"))


def timed_pair(fa, fb, repeat: int) -> tuple[float, float]:
    """Best-of-``repeat`` times of two functions, interleaved (a, b, a, b, ...) so that
    load from other processes hits both alike; one warm-up each first."""
    fa(), fb()
    ta = tb = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fa()
        ta = min(ta, time.perf_counter() - t)
        t = time.perf_counter()
        fb()
        tb = min(tb, time.perf_counter() - t)
    return ta, tb


def rss_child(n: int, folder: str, size: int) -> None:
    from pipeline import RunConfig, run
    out = Path(tempfile.mkdtemp()) / "s.h5"
    run(RunConfig(images=folder, layer="all", model="vgg16", weights="random", size=size, batch_size=32,
                  workers=0, progress=False, out=str(out), limit=n))
    print(json.dumps({"n": n, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rss", type=int, nargs=2, default=[1000, 10000], metavar=("SMALL", "LARGE"))
    ap.add_argument("--rss-size", type=int, default=32, help="input size for the RSS runs (keeps 10k fast)")
    ap.add_argument("--models", default="vgg16,resnet50,mobilenet_v2")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss_child:
        return rss_child(a.rss_child, a.folder, a.rss_size)
    if a.quick:
        a.images, a.size, a.rss, a.repeat = 16, 96, [200, 2000], 1

    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu")
    tmp = Path(tempfile.mkdtemp(prefix="bench_mine_"))
    make_jpegs(tmp / "imgs", a.images)
    prep = Preprocessing("torchvision", a.size)
    src = resolve_images(str(tmp / "imgs"))
    ds = ImageDataset(src, prep)

    t = time.perf_counter()
    batches = list(make_loader(ds, a.batch_size, 0, False))
    decode = a.images / (time.perf_counter() - t)
    print(f"decode+resize only (1 process): {decode:8.1f} img/s")
    dev = torch.device("cpu")

    def bare(net, layers):
        deepest = max(layers, key=lambda n: net.layers[n].order)
        trunk = create_feature_extractor(net.model, return_nodes=[net.layers[deepest].module]).eval()

        def go():
            with torch.inference_mode():
                for b in batches:
                    trunk(normalize(b["pixels"], prep))
        return go

    def mined(net, layers):
        def go():
            st = new_state(net, layers, 9, dev)
            stream(net, st, batches, prep, dev)
        return go

    one = {"vgg16": "conv5_3", "resnet50": "layer3.5", "mobilenet_v2": "features.14"}
    print(f"{'':<34}{'bare img/s':>12}{'mine img/s':>12}{'ratio':>8}   (target: 1 layer >= 0.95, all >= 0.90)")
    for model in a.models.split(","):
        net = load_network(model, "random", a.size)
        every = net.select("all")
        for label, layers in ((f"{model} 1 layer ({one.get(model, every[-1])})", [one.get(model, every[-1])]),
                              (f"{model} all {len(every)} default layers", every)):
            tb, tm = timed_pair(bare(net, layers), mined(net, layers), a.repeat)
            print(f"{label:<34}{a.images / tb:12.2f}{a.images / tm:12.2f}{tb / tm:8.3f}", flush=True)

    small, large = a.rss
    make_jpegs(tmp / "many", large)
    rss = []
    for n in (small, large):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(n), "--folder", str(tmp / "many"),
                              "--rss-size", str(a.rss_size)], check=True, capture_output=True, text=True)
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        rss.append(rec["maxrss_mb"])
        print(f"peak RSS, mine run over {n:>6} images (all conv, {a.rss_size}px): {rec['maxrss_mb']:8.1f} MB"
              f"  ({n / (time.perf_counter() - t):.0f} img/s end to end)")
    print(f"RSS ratio {large}/{small}: {rss[1] / rss[0]:.3f}   (target <= 1.10)")


if __name__ == "__main__":
    main()
