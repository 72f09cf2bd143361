#!/usr/bin/env python
"""Mining overhead and memory, measured in one run on this machine.

Prints, on the same decoded images and batch size:
  - images/s of a bare torchvision forward pass up to the deepest requested layer (the graph
    truncated there by torchvision's ``create_feature_extractor``: no hooks, nothing above it),
  - images/s of mine's streaming pass (hooks + spatial max + running top-k + unit statistics) for
    one layer and for the model's default layer set (``--layer all``), and their ratios to the
    bare pass, for each model of ``--models`` (vgg16, resnet50, mobilenet_v2 by default). The
    streaming pass starts from top-k already filled by ``--fill`` other pictures, as a job past
    its first images is; the "from empty" row starts a job (every map of the first batches enters
    a top-k and needs an arg-max and a sort, a cost that fades as the top-k fill),
  - decode-only throughput of the data path (files -> uint8 tensors),
  - peak RSS of a full `mine run` over 1k and 10k generated JPEGs (child processes),
  - end to end (``--e2e``, also part of the default run): the whole `mine run` (start-up,
    decoding workers, streaming, finalize, store write) over N distinct JPEGs against the bare
    forward pass over the same images already decoded, in the same run, with the time split
    into phases (``--device cuda`` runs both on the GPU; ``--distributed N`` also launches
    ``torchrun --nproc-per-node N`` on the same set, gloo on CPU, NCCL on GPU).

Targets on the 2-core CPU: all default layers >= 0.90 x bare, one layer >= 0.95 x,
peak RSS for 10k within 10% of 1k.

    python scripts/bench_mine.py                 # defaults: 3 models, 224 px, 192 images, batch 32
    python scripts/bench_mine.py --quick         # smaller, for a smoke test
    python scripts/bench_mine.py --e2e-only --e2e-images 512 --e2e-size 112 --distributed 2
    python scripts/bench_mine.py --e2e-only --device cuda --distributed 8   # on a GPU node
"""
from __future__ import annotations

import argparse
import copy
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

from pipeline.allocator import keep_freed_memory  # noqa: E402
from pipeline.data import ImageDataset, Preprocessing, make_loader, normalize, resolve_images  # noqa: E402
from pipeline.mining.stream import new_state, stream  # noqa: E402
from pipeline.models.weights import load_network  # noqa: E402


def make_jpegs(folder: Path, n: int, size=(500, 375), distinct_bases: int = 40, seed: int = 0) -> None:
    """``n`` realistic-size JPEGs: a few smooth random bases, each copy made unique by
    trailing bytes after the JPEG end marker (decoders ignore them; the hash changes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
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
    print(json.dumps({"n": n, "maxrss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux: VmHWM, the high-water mark of this program's memory; not
    ru_maxrss, which a child started by fork + exec inherits from its parent at the fork (a parent
    that has run the 224 px models section then reads as the child's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def e2e(a) -> None:
    """The whole `mine run` vs the bare forward pass over already-decoded images (ratios)."""
    import os
    import shutil

    from pipeline import RunConfig, run
    from pipeline.mining import finalize as fin_mod
    from pipeline.store.read import Store

    if a.e2e_images == 0:
        return
    dev = torch.device(a.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    make_jpegs(tmp / "imgs", a.e2e_images, distinct_bases=a.e2e_bases or a.e2e_images)
    prep = Preprocessing("torchvision", a.e2e_size)
    src = resolve_images(str(tmp / "imgs"))
    batches = list(make_loader(ImageDataset(src, prep), a.batch_size, 0, False))
    net = load_network("vgg16", "random", a.e2e_size)
    what = (f"{a.e2e_images} distinct JPEGs" if not a.e2e_bases else
            f"{a.e2e_images} JPEGs ({a.e2e_bases} distinct pictures, each file unique)")
    print(f"\nend to end: vgg16 random, {what} 500x375 at {a.e2e_size} px, batch "
          f"{a.batch_size}, {a.workers} decoding workers, {a.device}, {torch.get_num_threads()} threads")
    print(f"{'':<26}{'bare img/s':>11}{'stream img/s':>13}{'mine run img/s':>15}{'stream/bare':>12}"
          f"{'e2e/bare':>9}{'kept':>12}   phases of mine run (s)")
    for layer in a.e2e_layers.split(","):
        layers = net.select(layer)
        label = f"{len(layers)} layers ({layer})" if len(layers) > 1 else f"1 layer ({layer})"
        deepest = max(layers, key=lambda n: net.layers[n].order)
        trunk = create_feature_extractor(net.model, return_nodes=[net.layers[deepest].module]).eval().to(dev)
        on_dev = [b["pixels"].to(dev) for b in batches]

        def bare():
            with torch.inference_mode():
                for px in on_dev:
                    trunk(normalize(px, prep))
            if dev.type == "cuda":
                torch.cuda.synchronize()

        def streaming():
            net.to(dev)
            st = new_state(net, layers, 9, dev)
            stream(net, st, batches, prep, dev)
            if dev.type == "cuda":
                torch.cuda.synchronize()

        phases: dict[str, float] = {}
        real_finalize = fin_mod.finalize

        def timed_finalize(*args, **kw):
            t = time.perf_counter()
            try:
                return real_finalize(*args, **kw)
            finally:
                phases["finalize"] = time.perf_counter() - t

        def whole():
            out = tmp / "e2e.h5"
            for p in tmp.glob("e2e.h5*"):
                p.unlink()
            t = time.perf_counter()
            import pipeline.jobs.combine as comb
            comb.finalize = timed_finalize
            try:
                run(RunConfig(images=str(tmp / "imgs"), layer=layer, model="vgg16", weights="random",
                              size=a.e2e_size, batch_size=a.batch_size, workers=a.workers, device=a.device,
                              progress=False, out=str(out)))
            finally:
                comb.finalize = real_finalize
            phases["total"] = time.perf_counter() - t
            with Store(out) as s:
                phases["kept"] = len(s.kept_keys())

        tb, ts = timed_pair(bare, streaming, a.repeat)
        whole()
        n = a.e2e_images
        rest = phases["total"] - phases["finalize"]
        print(f"{label:<26}{n / tb:11.2f}{n / ts:13.2f}{n / phases['total']:15.2f}{tb / ts:12.3f}"
              f"{tb / phases['total']:9.3f}{phases['kept']:>6} ({100 * phases['kept'] / n:3.0f}%)"
              f"   total {phases['total']:.1f} = finalize "
              f"{phases['finalize']:.1f} + start-up/stream/write {rest:.1f}", flush=True)
        if a.distributed:
            out = tmp / "dist.h5"
            for p in tmp.glob("dist.h5*"):
                p.unlink()
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                   str(a.distributed), "-m", "pipeline", "run", "--images", str(tmp / "imgs"), "--layer", layer,
                   "--model", "vgg16", "--weights", "random", "--size", str(a.e2e_size), "--batch-size",
                   str(a.batch_size), "--workers", str(a.workers), "--device", a.device, "--quiet", "--out", str(out)]
            # (no --log: torchrun's own parser takes it for its --log-dir; the record goes next to the store)
            env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            wall = time.perf_counter() - t
            rec = json.loads((tmp / "mine-runs.jsonl").read_text().splitlines()[-1])
            per = ", ".join(f"rank {r['rank']} {r['images_per_s']:.2f}" for r in rec["ranks"])
            print(f"{'  torchrun x' + str(a.distributed):<26}{'':11}{'':13}{n / rec['seconds']:15.2f}{'':12}"
                  f"{tb / rec['seconds']:9.3f}{'':12}   job {rec['seconds']:.1f} s (command {wall:.1f} s with "
                  f"interpreter start-up); streaming img/s per rank: {per}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--fill", type=int, default=192,
                    help="other pictures streamed (untimed) into the top-k before the timed pass (0: from empty)")
    ap.add_argument("--batch-size", type=int, default=32, help="images per forward pass (mine run's default)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rss", type=int, nargs=2, default=[1000, 10000], metavar=("SMALL", "LARGE"),
                    help="image counts of the two peak-RSS runs (0 0: leave that section out)")
    ap.add_argument("--rss-size", type=int, default=32, help="input size for the RSS runs (keeps 10k fast)")
    ap.add_argument("--models", default="vgg16,resnet50,mobilenet_v2")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--e2e-only", action="store_true", help="only the end-to-end section")
    ap.add_argument("--e2e-images", type=int, default=512, help="0: leave the end-to-end section out")
    ap.add_argument("--e2e-size", type=int, default=112)
    ap.add_argument("--e2e-bases", type=int, default=0,
                    help="make the files from this many distinct pictures (0: all distinct); few pictures give "
                         "a set where few images are kept (each channel keeps copies of its best picture)")
    ap.add_argument("--e2e-layers", default="all,conv5_3", help="comma-separated --layer values, one row each")
    ap.add_argument("--workers", type=int, default=2, help="decoding workers of the end-to-end runs")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (end-to-end section)")
    ap.add_argument("--distributed", type=int, default=0, metavar="N",
                    help="also run the end-to-end job under torchrun with N processes")
    ap.add_argument("--malloc-default", action="store_true",
                    help="leave glibc's malloc as it is in the in-process rows and the RSS children (mine keeps "
                         "freed memory for reuse: pipeline/allocator.py)")
    ap.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if not a.malloc_default:
        keep_freed_memory()  # as the `mine` command does (pipeline/allocator.py)
    if a.rss_child:
        return rss_child(a.rss_child, a.folder, a.rss_size)
    if a.quick:
        a.images, a.fill, a.size, a.rss, a.repeat, a.e2e_images = 16, 16, 96, [200, 2000], 1, 64
    if a.e2e_only:
        torch.set_grad_enabled(False)
        return e2e(a)

    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu")
    tmp = Path(tempfile.mkdtemp(prefix="bench_mine_"))
    make_jpegs(tmp / "imgs", a.images, distinct_bases=a.images)  # distinct pictures, as in a real collection
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

    fill = []
    if a.fill:
        make_jpegs(tmp / "fill", a.fill, distinct_bases=a.fill, seed=1)  # other pictures: other values and keys
        fill = list(make_loader(ImageDataset(resolve_images(str(tmp / "fill")), prep), a.batch_size, 0, False))

    def mined(net, layers, start=None):
        # a fresh copy of the starting state per run, made before the clock starts (a job sets up once)
        states = [copy.deepcopy(start) if start is not None else new_state(net, layers, 9, dev)
                  for _ in range(a.repeat + 1)]

        def go():
            stream(net, states.pop(), batches, prep, dev)
        return go

    one = {"vgg16": "conv5_3", "resnet50": "layer3.5", "mobilenet_v2": "features.14"}
    after = f"after {a.fill}" if a.fill else "from empty"
    print(f"{'':<46}{'bare img/s':>12}{'mine img/s':>12}{'ratio':>8}   (target: 1 layer >= 0.95, all >= 0.90)")
    for model in filter(None, a.models.split(",")):  # --models "": only the RSS and end-to-end sections
        net = load_network(model, "random", a.size)
        every = net.select("all")
        rows = [(f"{model} 1 layer ({one.get(model, every[-1])}), {after}", [one.get(model, every[-1])], True),
                (f"{model} all {len(every)} default layers, {after}", every, True)]
        if a.fill:
            rows.append((f"{model} all {len(every)} default layers, from empty", every, False))
        for label, layers, filled in rows:
            start = None
            if filled and fill:
                start = new_state(net, layers, 9, dev)
                stream(net, start, fill, prep, dev)
            tb, tm = timed_pair(bare(net, layers), mined(net, layers, start), a.repeat)
            print(f"{label:<46}{a.images / tb:12.2f}{a.images / tm:12.2f}{tb / tm:8.3f}", flush=True)

    small, large = a.rss
    if large == 0:
        return e2e(a)
    make_jpegs(tmp / "many", large)
    rss = []
    for n in (small, large):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(n), "--folder", str(tmp / "many"),
                              "--rss-size", str(a.rss_size)] + ["--malloc-default"] * a.malloc_default,
                             check=True, capture_output=True, text=True)
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        rss.append(rec["maxrss_mb"])
        print(f"peak RSS, mine run over {n:>6} images (all conv, {a.rss_size}px): {rec['maxrss_mb']:8.1f} MB"
              f"  ({n / (time.perf_counter() - t):.0f} img/s end to end)")
    print(f"RSS ratio {large}/{small}: {rss[1] / rss[0]:.3f}   (target <= 1.10)")
    e2e(a)


if __name__ == "__main__":
    main()
